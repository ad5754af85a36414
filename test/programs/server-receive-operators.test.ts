// server-receive for its operator: limits from the config, what the handler
// and the received line say about the sender, JSON logs and metrics.
import assert from 'node:assert/strict';
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
