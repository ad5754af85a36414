// The metrics registry's text format, read back by Prometheus's own Python
// parser (python3-prometheus-client), and the HTTP endpoint.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { get } from 'node:http';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { createLog } from '../../src/log.js';
import { Registry, serveMetrics } from '../../src/net/metrics.js';
import { runCommand } from '../helpers.js';

/** Debian's python3, where python3-prometheus-client installs (a pyenv python3 on PATH may lack it). */
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

const PARSE = `
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    for s in f.samples:
        out.append([f.name, f.type, s.name, s.labels, s.value])
print(json.dumps(out))
`;

function sample(): Registry {
  const r = new Registry();
  const c = r.counter('ima_messages_total', 'Messages by result.');
  c.inc({ result: 'OK' });
  c.inc({ result: 'OK' });
  c.inc({ result: 'say "hi"\\\nback' }, 3);
  r.gauge('ima_connections_open', 'Open.').set({}, 4);
  const h = r.histogram('ima_handler_duration_seconds', 'Handler time.', [0.1, 1]);
  h.observe({ result: 'OK' }, 0.05);
  h.observe({ result: 'OK' }, 0.5);
  h.observe({ result: 'OK' }, 7);
  return r;
}

test("metrics text: Prometheus's own parser reads back every sample, labels escaped, histogram cumulative", async (t) => {
  const probe = await runCommand(PYTHON, ['-c', 'import prometheus_client']);
  if (probe.code !== 0) return t.skip('python3-prometheus-client is not installed (apt-get install python3-prometheus-client)');
  const r = await runCommand(PYTHON, ['-c', PARSE], { input: sample().render() });
  assert.equal(r.code, 0, r.stderr);
  const rows = JSON.parse(r.stdout.toString()) as [string, string, string, Record<string, string>, number][];
  const value = (name: string, labels: Record<string, string>) => rows.find((x) => x[2] === name && JSON.stringify(x[3]) === JSON.stringify(labels))?.[4];
  assert.equal(value('ima_messages_total', { result: 'OK' }), 2);
  assert.equal(value('ima_messages_total', { result: 'say "hi"\\\nback' }), 3, 'quote, backslash and newline survive');
  assert.equal(value('ima_connections_open', {}), 4);
  assert.equal(value('ima_handler_duration_seconds_bucket', { result: 'OK', le: '0.1' }), 1);
  assert.equal(value('ima_handler_duration_seconds_bucket', { result: 'OK', le: '1' }), 2);
  assert.equal(value('ima_handler_duration_seconds_bucket', { result: 'OK', le: '+Inf' }), 3);
  assert.equal(value('ima_handler_duration_seconds_count', { result: 'OK' }), 3);
  assert.equal(value('ima_handler_duration_seconds_sum', { result: 'OK' }), 7.55);
  assert.deepEqual([...new Set(rows.map((x) => `${x[0]} ${x[1]}`))].sort(), [
    'ima_connections_open gauge',
    'ima_handler_duration_seconds histogram',
    'ima_messages counter',
  ]);
});

test('metrics endpoint: GET /metrics answers the text format; anything else 404 or 405; a port in use is a config error', async () => {
  const log = createLog(new PassThrough(), 'test', 'info');
  const m = await serveMetrics('127.0.0.1:0', sample(), log, 'x.toml');
  const fetchText = (path: string, method = 'GET') =>
    new Promise<{ status: number; type?: string; body: string }>((res, rej) => {
      const req = get({ host: '127.0.0.1', port: m.address.port, path, method, timeout: 5000 }, (r) => {
        let body = '';
        r.on('data', (d) => (body += d));
        r.on('end', () => res({ status: r.statusCode!, type: r.headers['content-type'], body }));
        r.on('error', rej);
      });
      req.on('error', rej);
      req.on('timeout', () => req.destroy(new Error('no answer in 5 s')));
    });
  try {
    const ok = await fetchText('/metrics');
    assert.equal(ok.status, 200);
    assert.equal(ok.type, 'text/plain; version=0.0.4; charset=utf-8');
    assert.match(ok.body, /^ima_messages_total\{result="OK"\} 2$/m);
    assert.equal((await fetchText('/')).status, 404);
    assert.equal((await fetchText('/metrics', 'POST')).status, 405);
    await assert.rejects(
      serveMetrics(`127.0.0.1:${m.address.port}`, new Registry(), log, 'x.toml'),
      /x\.toml: metrics: cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE/,
    );
  } finally {
    await m.close();
  }
});
