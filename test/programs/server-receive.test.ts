import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { readMessage } from '../../src/message/index.js';
import { basicFields, config, connect, headersOf, message, outDir, startServer, HANDLER, type Server } from '../imdp-fixture.js';

const servers: Server[] = [];
after(async () => Promise.all(servers.map((s) => s.stop())));
async function server(...a: Parameters<typeof config>) {
  const s = await startServer(config(...a));
  servers.push(s);
  return s;
}

test('server-receive: happy path, two messages on one connection, received line, env, REPLY lines relayed', async () => {
  const out = outDir();
  const s = await server({ handler: ['node', HANDLER, 'ok', out] });
  const c = await connect(s.port);
  assert.equal(c.serverDomain, 'b.test');
  for (let i = 0; i < 2; i++) {
    const tar = await message(basicFields());
    c.sendMail(headersOf(tar), tar.length);
    const a = await c.readAnswer();
    assert.equal(a.word, 'ACCEPT', JSON.stringify(a));
    await c.sendData(tar, tar.length);
    const r = await c.readResult();
    assert.equal(r.word, 'OK', JSON.stringify(r));
    assert.deepEqual(r.replies, ['OK bob@b.test', 'REPLY-LIKE second line']);
  }
  await c.done();
  const stored = readFileSync(join(out, '0.ima'));
  const entries = readMessage((await import('node:stream')).Readable.from([stored]));
  const first = await entries.next();
  assert.ok(!first.done && first.value.kind === 'headers');
  const h = first.value.headers;
  assert.match(h.get('received')!, /^from a\.test \(127\.0\.0\.1; cert sha256 [0-9a-f]{16}\) by b\.test with IMDP id [0-9a-f]{12}\.1; \d{4}-/);
  assert.equal(h.get('subject'), 'hi');
  const env = JSON.parse(readFileSync(join(out, '1.env'), 'utf8'));
  assert.equal(env.IMA_PEER_DOMAIN, 'a.test');
  assert.equal(env.IMA_PEER_ADDRESS, '127.0.0.1');
  assert.match(env.IMA_PEER_CERT_SHA256, /^[0-9a-f]{64}$/);
  assert.match(env.IMA_SESSION_ID, /^[0-9a-f]{12}$/);
  assert.match(s.stderr(), /session=\w+ msg=1 peer=a\.test address=127\.0\.0\.1 from=<alice@a\.test> to=<bob@b\.test> size=\d+ status=OK/);
});
