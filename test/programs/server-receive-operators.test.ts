// server-receive for its operator: limits from the config, what the handler
// and the received line say about the sender, JSON logs and metrics.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { HANDLER, basicFields, config, connect, deliver, message, outDir, pki, serverPool } from '../imdp-fixture.js';
import { scrape, startJsonServer } from '../metrics-scrape.js';
import { runBin } from '../helpers.js';

const server = serverPool();

test('server-receive: limits.max_entries bounds the entries of a message (FAIL 5.6.0)', async () => {
  const out = outDir();
  const s = await server({ handler: ['node', HANDLER, 'ok', out], extra: '[limits]\nmax_entries = 1\n' });
  const c = await connect(s.port);
  const r = await deliver(c, await message(basicFields()));
  assert.equal(r.answer.word, 'ACCEPT');
  assert.equal(r.result?.word, 'FAIL', JSON.stringify(r.result));
  assert.match(r.result!.text, /^5\.6\.0 message has more than 1 entries/);
  await c.done();
});

test("server-receive tells the handler and the received line whether from's domain is the certified mailer's (alignment)", async () => {
  const out = outDir();
  const s = await server({ handler: ['node', HANDLER, 'ok', out] });
  const c = await connect(s.port);
  const own = await deliver(c, await message(basicFields()));
  assert.equal(own.result?.word, 'OK', JSON.stringify(own));
  const fields = basicFields().map(([k, v]): [string, string] => (k === 'from' ? [k, 'Carol <carol@C.test>'] : [k, v]));
  const foreign = await deliver(c, await message(fields));
  assert.equal(foreign.result?.word, 'OK', 'not aligned is told, not refused');
  await c.done();
  const seen = [0, 1].map((n) => ({
    env: JSON.parse(readFileSync(join(out, `${n}.env`), 'utf8')) as Record<string, string>,
    received: /^received: (.*)$/m.exec(readFileSync(join(out, `${n}.ima`), 'latin1'))![1],
  }));
  assert.equal(seen[0].env.IMA_FROM_ALIGNED, 'yes');
  assert.match(seen[0].received, /^from a\.test \(127\.0\.0\.1; cert sha256 [0-9a-f]{16}; from aligned\) by b\.test /);
  assert.equal(seen[1].env.IMA_FROM_ALIGNED, 'no');
  assert.equal(seen[1].env.IMA_PEER_DOMAIN, 'a.test');
  assert.match(seen[1].received, /^from a\.test \(127\.0\.0\.1; cert sha256 [0-9a-f]{16}; from not aligned\) by b\.test /);
});

test("server-receive gives each message of a session its own sender's domain and alignment, and the session's id", async () => {
  const out = outDir();
  const s = await server({ handler: ['node', HANDLER, 'ok', out] });
  // One client certificate for two mailer domains: one session carries mail of both.
  const c = await connect(s.port, pki.server('a.test', { also: ['c.test'] }));
  const as = (domain: string, from: string) =>
    basicFields().map(([k, v]): [string, string] => (k === 'mailer' ? [k, domain] : k === 'from' ? [k, from] : [k, v]));
  for (const [domain, from] of [
    ['a.test', 'alice@a.test'],
    ['c.test', 'carol@c.test'],
    ['a.test', 'alice@a.test'],
    ['c.test', 'alice@a.test'],
  ]) {
    const r = await deliver(c, await message(as(domain, from)));
    assert.equal(r.result?.word, 'OK', JSON.stringify(r));
  }
  await c.done();
  const envs = [0, 1, 2, 3].map((n) => JSON.parse(readFileSync(join(out, `${n}.env`), 'utf8')) as Record<string, string>);
  assert.deepEqual(
    envs.map((e) => [e.IMA_PEER_DOMAIN, e.IMA_FROM_ALIGNED]),
    [
      ['a.test', 'yes'],
      ['c.test', 'yes'],
      ['a.test', 'yes'],
      ['c.test', 'no'],
    ],
  );
  assert.equal(new Set(envs.map((e) => e.IMA_SESSION_ID)).size, 1);
  assert.match(envs[0].IMA_SESSION_ID, /\S/);
});

test('server-receive --log-format json and metrics: one JSON object per line, and the scraped numbers match real deliveries', async () => {
  const out = outDir();
  const file = join(out, 'server-receive.toml');
  writeFileSync(file, `metrics = "127.0.0.1:0"\n${config({ handler: ['node', HANDLER, 'ok', out], extra: '[limits]\nmax_hops = 2\n' })}`);
  const s = await startJsonServer('server-receive', ['--config', file, '--listen', '127.0.0.1:0']);
  try {
    const c = await connect(s.port);
    const sizes: number[] = [];
    for (let i = 0; i < 2; i++) {
      const tar = await message(basicFields(), `message ${i} `.repeat(100 * (i + 1)));
      sizes.push(tar.length);
      assert.equal((await deliver(c, tar)).result?.word, 'OK');
    }
    const loop = await deliver(
      c,
      await message(
        basicFields([
          ['received', 'from x by y'],
          ['received', 'from y by z'],
        ]),
      ),
    );
    assert.equal(loop.answer.status, '5.4.6');
    await c.done();
    await assert.rejects(connect(s.port, pki.odd('a-no-eku-2', { commonName: 'a.test', dnsNames: ['a.test'], eku: 'none' })));
    // The session's end is counted when the server has closed it: wait for that event in the log, with a deadline.
    const deadline = Date.now() + 10_000;
    let m = await scrape(s.metricsPort);
    while (m.get('ima_connections_open') !== 0 && Date.now() < deadline) {
      await new Promise((r) => setImmediate(r));
      m = await scrape(s.metricsPort);
    }
    assert.equal(m.get('ima_messages_total{result="OK"}'), 2);
    assert.equal(m.get('ima_message_bytes_total{result="OK"}'), sizes[0] + sizes[1]);
    assert.equal(m.get('ima_mail_rejected_total{status="5.4.6"}'), 1);
    assert.equal(m.get('ima_handler_duration_seconds_count{result="OK"}'), 2);
    assert.ok(m.get('ima_handler_duration_seconds_sum{result="OK"}')! > 0);
    assert.equal(m.get('ima_handler_duration_seconds_bucket{result="OK",le="+Inf"}'), 2);
    assert.equal(m.get('ima_connections_total{result="accepted"}'), 1);
    assert.equal(m.get('ima_connections_total{result="refused"}'), 1);
    assert.equal(m.get('ima_connections_open'), 0);
    const records = s.records();
    assert.ok(records.length >= 4);
    for (const r of records) {
      assert.equal(r.program, 'server-receive');
      assert.match(r.level, /^(error|warn|info|debug)$/);
      assert.match(r.time, /^\d{4}-\d\d-\d\dT/);
    }
    const delivered = records.filter((r) => r.status === 'OK');
    assert.equal(delivered.length, 2);
    assert.equal(delivered[0].peer, 'a.test');
    assert.equal(delivered[0].from, 'alice@a.test');
    assert.equal(delivered[0].size, String(sizes[0]));
    assert.match(delivered[0].msg, /^session=[0-9a-f]{12} msg=1 peer=a\.test .* status=OK$/, 'msg is the text line without the program');
  } finally {
    await s.stop();
  }
});

test('server-receive: a metrics port in use is exit 78 naming the key, as a JSON record under --log-format json', async () => {
  const busy = createServer();
  busy.listen(0, '127.0.0.1');
  await once(busy, 'listening');
  try {
    const out = outDir();
    const file = join(out, 'busy.toml');
    writeFileSync(file, `metrics = "127.0.0.1:${(busy.address() as AddressInfo).port}"\n${config()}`);
    const r = await runBin('server-receive', ['--config', file, '--listen', '127.0.0.1:0', '--log-format', 'json']);
    assert.equal(r.code, 78, r.stderr);
    const last = JSON.parse(r.stderr.trim().split('\n').at(-1)!) as Record<string, string>;
    assert.equal(last.level, 'error');
    assert.equal(last.program, 'server-receive');
    assert.match(last.msg, /busy\.toml: metrics: cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE/);
  } finally {
    busy.close();
  }
});
