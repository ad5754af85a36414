// --log-format json: one object per line, whatever a hostile value holds.
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { createLog, jsonRecord } from '../src/log.js';

test('json log: one object per line, key=value pairs as fields, hostile values cannot forge a line or a field', () => {
  const sink = new PassThrough();
  let text = '';
  sink.on('data', (d) => (text += d));
  const log = createLog(sink, 'post-office', 'info', 'json');
  log.info('session=ab12 login user=bob\n{"level":"error"} program=evil address=192.0.2.1 result=failed');
  log.debug('not at this level');
  log.warn('from=<alice@a.test> size=12 (note=x)');
  const lines = text.split('\n').filter(Boolean);
  assert.equal(lines.length, 2);
  const [a, b] = lines.map((l) => JSON.parse(l) as Record<string, string>);
  assert.equal(a.program, 'post-office');
  assert.equal(a.level, 'info');
  assert.equal(a.user, 'bob');
  assert.equal(a.result, 'failed');
  assert.match(a.msg, /^session=ab12 login user=bob\n/, 'msg keeps the text; JSON escapes the newline');
  assert.equal(b.level, 'warn');
  assert.equal(b.from, 'alice@a.test');
  assert.equal(b.note, 'x');
  assert.deepEqual(Object.keys(jsonRecord('p', 'info', 'time=1 level=debug msg=x', new Date(0))), ['time', 'program', 'level', 'msg']);
});
