// server-receive for its operator: limits from the config, what the handler
// and the received line say about the sender, JSON logs and metrics.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { HANDLER, type Server, basicFields, config, connect, headersOf, message, outDir, startServer } from '../imdp-fixture.js';

const servers: Server[] = [];
after(async () => Promise.all(servers.map((s) => s.stop())));
async function server(...a: Parameters<typeof config>) {
  const s = await startServer(config(...a));
  servers.push(s);
  return s;
}

async function deliver(c: Awaited<ReturnType<typeof connect>>, tar: Buffer) {
  c.sendMail(headersOf(tar), tar.length);
  const a = await c.readAnswer();
  if (a.word !== 'ACCEPT') {
    c.sendAbort();
    return { answer: a };
  }
  await c.sendData(tar, tar.length);
  return { answer: a, result: await c.readResult() };
}

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
