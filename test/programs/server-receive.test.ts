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

async function deliver(c: Awaited<ReturnType<typeof connect>>, tar: Buffer, raw = headersOf(tar)) {
  c.sendMail(raw, tar.length);
  const a = await c.readAnswer();
  if (a.word !== 'ACCEPT') {
    c.sendAbort();
    return { answer: a };
  }
  await c.sendData(tar, tar.length);
  return { answer: a, result: await c.readResult() };
}

test('server-receive: certificate failures never get past the greeting', async () => {
  const s = await server();
  const { Pki, EXPIRED } = await import('../pki.js');
  const { dir, pki } = await import('../imdp-fixture.js');
  const other = new Pki(dir, 'stranger');
  const cases = [
    { name: 'unknown CA', cert: other.server('a.test', { file: 'stranger-a' }), expect: /refused: client certificate rejected.*does not chain to a CA this server trusts.*public CAs stopped issuing clientAuth certificates in 2026/ },
    { name: 'expired', cert: pki.server('a.test', { file: 'expired-a', validity: EXPIRED }), expect: /refused: client certificate rejected.*expired/ },
    { name: 'no clientAuth', cert: pki.server('a.test', { file: 'serveronly-a', serverAuthOnly: true }), expect: /lacks clientAuth; public CAs stopped issuing/ },
  ];
  for (const k of cases) await assert.rejects(connect(s.port, k.cert), (e: Error) => k.expect.test(e.message), k.name);
  const tls = await import('node:tls');
  const line = await new Promise<string>((res, rej) => {
    const sock = tls.connect({ host: '127.0.0.1', port: s.port, ca: pki.ca.certPem, servername: 'b.test' });
    let buf = '';
    sock.on('data', (d) => (buf += d));
    sock.on('close', () => res(buf));
    sock.on('error', rej);
  });
  assert.match(line, /^BYE no client certificate: this server requires one \(mutual TLS\); public CAs stopped issuing clientAuth certificates in 2026, so an IMA federation runs its own CA/);
  assert.ok(!/^IMDP/m.test(line));
});

test('server-receive: the certificate must cover the domain of mailer, or of from when there is no mailer', async () => {
  const out = outDir();
  const s = await server({ handler: ['node', HANDLER, 'ok', out] });
  const { certs } = await import('../imdp-fixture.js');
  const c = await connect(s.port, certs.c);
  let r = await deliver(c, await message(basicFields()));
  assert.equal(r.answer.word, 'REJECT');
  assert.equal(r.answer.status, '5.7.1');
  assert.match(r.answer.text, /does not cover a\.test, the domain of mailer/);
  const noMailer = basicFields().filter(([k]) => k !== 'mailer').map(([k, v]): [string, string] => [k, k === 'from' ? 'carol@c.test' : v]);
  r = await deliver(c, await message(noMailer));
  assert.equal(r.result?.word, 'OK', JSON.stringify(r));
  const wrongFrom = noMailer.map(([k, v]): [string, string] => [k, k === 'from' ? 'alice@a.test' : v]);
  r = await deliver(c, await message(wrongFrom));
  assert.match(r.answer.text, /does not cover a\.test, the domain of from/);
  await c.done();
  assert.equal(readdirSync(out).filter((f) => f.endsWith('.ima')).length, 1, 'only the covered message reached the handler');
});

for (const [code, word] of [[0, 'OK'], [1, 'FAIL'], [2, 'PARTIAL'], [75, 'TEMPFAIL'], [9, 'TEMPFAIL']] as const) {
  test(`server-receive: handler exit ${code} gives ${word}`, async () => {
    const s = await server({ handler: ['node', HANDLER, `exit:${code}`, outDir()] });
    const c = await connect(s.port);
    const r = await deliver(c, await message(basicFields()));
    assert.equal(r.result?.word, word);
    assert.equal(r.result?.replies[0], 'OK bob@b.test');
    await c.done();
  });
}

test('server-receive: exit 3 drops the connection; a crashing handler is TEMPFAIL and the server lives on', async () => {
  const s = await server({ handler: ['node', HANDLER, 'exit:3', outDir()] });
  const c = await connect(s.port);
  await assert.rejects(deliver(c, await message(basicFields())), /connection closed by the server after: REPLY-LIKE second line/);
  c.close();
  const s2 = await server({ handler: ['node', HANDLER, 'crash', outDir()] });
  const c2 = await connect(s2.port);
  for (let i = 0; i < 2; i++) {
    const r = await deliver(c2, await message(basicFields()));
    assert.equal(r.result?.word, 'TEMPFAIL');
  }
  await c2.done();
  assert.match(s2.stderr(), /handler crashed/);
});
