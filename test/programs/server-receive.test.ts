import assert from 'node:assert/strict';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { readMessage } from '../../src/message/index.js';
import { basicFields, config, connect, deliver, headersOf, message, outDir, serverPool, HANDLER } from '../imdp-fixture.js';
import { runBin } from '../helpers.js';

const server = serverPool();

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
  assert.match(h.get('received')!, /^from a\.test \(127\.0\.0\.1; cert sha256 [0-9a-f]{16}; from aligned\) by b\.test with IMDP id [0-9a-f]{12}\.1; \d{4}-/);
  assert.equal(h.get('subject'), 'hi');
  const env = JSON.parse(readFileSync(join(out, '1.env'), 'utf8'));
  assert.equal(env.IMA_PEER_DOMAIN, 'a.test');
  assert.equal(env.IMA_PEER_ADDRESS, '127.0.0.1');
  assert.match(env.IMA_PEER_CERT_SHA256, /^[0-9a-f]{64}$/);
  assert.match(env.IMA_SESSION_ID, /^[0-9a-f]{12}$/);
  await s.waitLog(/session=\w+ msg=1 peer=a\.test address=127\.0\.0\.1 from=<alice@a\.test> to=<bob@b\.test> size=\d+ status=OK/);
});

test('server-receive: a pipelining peer has its messages delivered side by side, and their answers in order', async () => {
  // The first message's handler can end only once the second's has run (it waits for the file the second
  // makes). Delivered one after the other, the first would time out (TEMPFAIL) and the second never run.
  const out = outDir();
  const mark = join(out, 'second-ran');
  const handler = join(out, 'handler.mjs');
  writeFileSync(
    handler,
    `import { existsSync, watch, writeFileSync } from 'node:fs';
    import { basename, dirname } from 'node:path';
    const [mark] = process.argv.slice(2);
    const chunks = [];
    for await (const c of process.stdin) chunks.push(c);
    const which = Buffer.concat(chunks).includes('subject: first') ? 'first' : 'second';
    if (which === 'first') {
      await new Promise((ran) => {
        const watcher = watch(dirname(mark), (_e, name) => name === basename(mark) && ran());
        const timer = setTimeout(() => { console.log('TEMPFAIL bob@b.test 4.0.0 the second message was not delivered meanwhile'); process.exit(75); }, 10_000);
        if (existsSync(mark)) ran();
      });
    } else writeFileSync(mark, 'ran');
    console.log('OK bob@b.test ' + which);
    process.exit(0);
    `,
  );
  const s = await server({ handler: ['node', handler, mark] });
  const c = await connect(s.port);
  const titled = (subject: string) => message(basicFields().map(([k, v]): [string, string] => [k, k === 'subject' ? subject : v]));
  const first = await titled('first');
  const second = await titled('second');
  c.sendMail(headersOf(first), first.length);
  await c.sendData(first, first.length);
  c.sendMail(headersOf(second), second.length);
  await c.sendData(second, second.length);
  for (const which of ['first', 'second']) {
    assert.equal((await c.readAnswer()).word, 'ACCEPT');
    const r = await c.readResult();
    assert.equal(r.word, 'OK', `${which}: ${JSON.stringify(r)}`);
    assert.deepEqual(r.replies, [`OK bob@b.test ${which}`]);
  }
  await c.done();
  await s.waitLog(/msg=2 .*status=OK/);
});

test('server-receive: certificate failures never get past the greeting', async () => {
  const s = await server();
  const { Pki, EXPIRED } = await import('../pki.js');
  const { dir, pki } = await import('../imdp-fixture.js');
  const other = new Pki(dir, 'stranger');
  const cases = [
    {
      name: 'unknown CA',
      cert: other.server('a.test', { file: 'stranger-a' }),
      expect: /refused: client certificate rejected.*does not chain to a CA trusted here.*public CAs stopped issuing clientAuth certificates in 2026/,
    },
    { name: 'expired', cert: pki.server('a.test', { file: 'expired-a', validity: EXPIRED }), expect: /refused: client certificate rejected.*expired/ },
    {
      name: 'no clientAuth',
      cert: pki.server('a.test', { file: 'serveronly-a', serverAuthOnly: true }),
      expect: /lacks clientAuth; public CAs stopped issuing/,
    },
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
  assert.match(
    line,
    /^BYE no client certificate: this server requires one \(mutual TLS\); public CAs stopped issuing clientAuth certificates in 2026, so an IMA federation runs its own CA/,
  );
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
  const noMailer = basicFields()
    .filter(([k]) => k !== 'mailer')
    .map(([k, v]): [string, string] => [k, k === 'from' ? 'carol@c.test' : v]);
  r = await deliver(c, await message(noMailer));
  assert.equal(r.result?.word, 'OK', JSON.stringify(r));
  const wrongFrom = noMailer.map(([k, v]): [string, string] => [k, k === 'from' ? 'alice@a.test' : v]);
  r = await deliver(c, await message(wrongFrom));
  assert.match(r.answer.text, /does not cover a\.test, the domain of from/);
  await c.done();
  assert.equal(readdirSync(out).filter((f) => f.endsWith('.ima')).length, 1, 'only the covered message reached the handler');
});

for (const [code, word] of [
  [0, 'OK'],
  [1, 'FAIL'],
  [2, 'PARTIAL'],
  [75, 'TEMPFAIL'],
  [9, 'TEMPFAIL'],
] as const) {
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
  await s2.waitLog(/handler crashed/);
});

test('server-receive: limits on size, header bytes, hops and messages per connection are REJECTs that keep the connection', async () => {
  const out = outDir();
  const s = await server({
    handler: ['node', HANDLER, 'ok', out],
    extra: '[limits]\nmax_message_bytes = 4096\nmax_header_bytes = 512\nmax_hops = 2\nmax_messages_per_connection = 3\n',
  });
  const c = await connect(s.port);
  const big = await message(basicFields(), 'x'.repeat(5000));
  let r = await deliver(c, big);
  assert.equal(r.answer.word, 'REJECT');
  assert.equal(r.answer.status, '5.3.4');
  assert.match(r.answer.text, /over the limit of 4096/);
  r = await deliver(c, await message(basicFields([['x-long', 'y'.repeat(600)]])));
  assert.match(`${r.answer.status} ${r.answer.text}`, /^5\.6\.0 headers larger than 512 bytes/);
  r = await deliver(
    c,
    await message(
      basicFields([
        ['received', 'from x by y'],
        ['received', 'from y by z'],
      ]),
    ),
  );
  assert.match(`${r.answer.status} ${r.answer.text}`, /^5\.4\.6 2 received lines: a mail loop/);
  r = await deliver(c, await message(basicFields()));
  assert.equal(r.result?.word, 'OK', 'the connection survived the rejections');
  await c.done();
  const c2 = await connect(s.port);
  for (let i = 0; i < 3; i++) assert.equal((await deliver(c2, await message(basicFields()))).result?.word, 'OK');
  r = await deliver(c2, await message(basicFields()));
  assert.match(`${r.answer.status} ${r.answer.text}`, /^4\.5\.3 at most 3 messages per connection/);
  await c2.done();
});

test('server-receive: DATA after a REJECT is read and discarded, the answer repeats the rejection, the next message goes through', async () => {
  const out = outDir();
  const s = await server({ handler: ['node', HANDLER, 'ok', out], extra: '[limits]\nmax_hops = 1\n' });
  const c = await connect(s.port);
  const looped = await message(basicFields([['received', 'from x by y']]));
  const fine = await message(basicFields());
  // Fully pipelined: everything written before any answer is read.
  c.sendMail(headersOf(looped), looped.length);
  await c.sendData(looped, looped.length);
  c.sendMail(headersOf(fine), fine.length);
  await c.sendData(fine, fine.length);
  assert.equal((await c.readAnswer()).word, 'REJECT');
  const r1 = await c.readResult();
  assert.equal(r1.word, 'FAIL');
  assert.match(r1.text, /^5\.4\.6 /);
  assert.equal((await c.readAnswer()).word, 'ACCEPT');
  assert.equal((await c.readResult()).word, 'OK');
  await c.done();
  assert.equal(readdirSync(out).filter((f) => f.endsWith('.ima')).length, 1);
});

test('server-receive: the headers entry sent must be the one announced; the handler never runs otherwise', async () => {
  const out = outDir();
  const s = await server({ handler: ['node', HANDLER, 'ok', out] });
  const c = await connect(s.port);
  const announced = await message(basicFields());
  const sent = await message(basicFields([['bcc', 'eve@b.test']]));
  c.sendMail(headersOf(announced), sent.length);
  assert.equal((await c.readAnswer()).word, 'ACCEPT');
  await c.sendData(sent, sent.length);
  const r = await c.readResult();
  assert.equal(r.word, 'FAIL');
  assert.match(r.text, /headers entry differs from the one announced/);
  const junk = Buffer.alloc(2048, 7);
  c.sendMail(headersOf(announced), junk.length);
  assert.equal((await c.readAnswer()).word, 'ACCEPT');
  await c.sendData(junk, junk.length);
  assert.equal((await c.readResult()).word, 'FAIL', 'not a tar at all');
  assert.equal((await deliver(c, await message(basicFields()))).result?.word, 'OK', 'still in step');
  await c.done();
  assert.equal(readdirSync(out).filter((f) => f.endsWith('.ima')).length, 1);
});

test('server-receive: malformed and out-of-order commands get ERROR; too many end the connection', async () => {
  const s = await server({ extra: '[limits]\nmax_errors = 4\n' });
  const c = await connect(s.port);
  const expectError = async (line: string, re: RegExp) => {
    c.socket.write(line);
    const a = await c.readAnswer();
    assert.equal(a.word, 'ERROR', line);
    assert.match(a.text, re);
  };
  await expectError('HELO a.test\n', /unknown command "HELO"/);
  await expectError('DATA\n', /DATA without an accepted MAIL/);
  await expectError('MAIL lots\nfrom: x\n\n', /MAIL needs the message size/);
  await expectError('MAIL 10\r\n', /control character/);
  c.socket.write('ABORT\n');
  const bye = await c.readAnswer();
  assert.equal(bye.word, 'BYE');
  assert.match(bye.text, /too many errors/);
});

test('server-receive: a line over the limit, a silent peer and a stalled transfer are dropped without disturbing others', async () => {
  const out = outDir();
  const s = await server({ handler: ['node', HANDLER, 'ok', out], extra: '[limits]\nmax_line = 100\n[timeouts]\nidle = "1s"\ndata = "1s"\n' });
  const busy = await connect(s.port);
  const long = await connect(s.port);
  long.socket.write(`MAIL ${'9'.repeat(200)}\n`);
  const a = await long.readAnswer();
  assert.equal(a.word, 'BYE');
  assert.match(a.text, /line longer than 100 bytes/);
  const silent = await connect(s.port);
  const stalled = await connect(s.port);
  const tar = await message(basicFields());
  stalled.sendMail(headersOf(tar), tar.length);
  assert.equal((await stalled.readAnswer()).word, 'ACCEPT');
  stalled.socket.write('DATA\n');
  stalled.socket.write(tar.subarray(0, 700));
  assert.equal((await deliver(busy, await message(basicFields()))).result?.word, 'OK');
  const idle = await silent.readAnswer(30_000);
  assert.equal(idle.word, 'BYE');
  assert.match(idle.text, /no command for 1 s/);
  // The stalled peer is told why (ima(7): BYE when the server can still say it).
  const bye = await stalled.readAnswer(30_000);
  assert.equal(bye.word, 'BYE');
  assert.match(bye.text, /no data for 1 s: closing/);
  await busy.done();
  assert.equal(readdirSync(out).filter((f) => f.endsWith('.ima')).length, 1, 'the stalled message was never stored');
  await s.waitLog(/connection closed: no data for 1 s/);
});

test('server-receive: connections over the per-address limit are closed at once; a handshake that never comes times out', async () => {
  const s = await server({ extra: '[limits]\nmax_connections_per_address = 2\n[timeouts]\nhandshake = "1s"\n' });
  const net = await import('node:net');
  const raw = net.connect(s.port, '127.0.0.1');
  await new Promise<void>((res) => raw.on('close', () => res()).on('error', () => {}));
  await s.waitLog(/TLS handshake failed: ERR_TLS_HANDSHAKE_TIMEOUT/);
  const one = await connect(s.port);
  const two = await connect(s.port);
  await assert.rejects(connect(s.port), /ECONNRESET|socket|closed|disconnected/i);
  await s.waitLog(/connection dropped: too many connections from this address/);
  await one.done();
  await two.done();
});

test('server-receive: a check command refuses unknown recipients before any data; its lines come as REPLY', async () => {
  const out = outDir();
  const { dir } = await import('../imdp-fixture.js');
  const { writeFileSync } = await import('node:fs');
  const check = join(dir, 'check.mjs');
  writeFileSync(
    check,
    `let t = ''; for await (const c of process.stdin) t += c;
const bad = /nobody@/.test(t); console.log(bad ? 'NORECIPIENT nobody@b.test' : 'OK bob@b.test'); process.exit(bad ? 1 : 0);\n`,
  );
  const s = await server({ handler: ['node', HANDLER, 'ok', out], check: ['node', check] });
  const c = await connect(s.port);
  let r = await deliver(c, await message(basicFields([['cc', 'nobody@b.test']])));
  assert.equal(r.answer.word, 'REJECT');
  assert.equal(r.answer.status, '5.1.1');
  assert.deepEqual(r.answer.replies, ['NORECIPIENT nobody@b.test']);
  r = await deliver(c, await message(basicFields()));
  assert.equal(r.result?.word, 'OK');
  await c.done();
  assert.equal(readdirSync(out).filter((f) => f.endsWith('.ima')).length, 1);
});

// Faults past a clean Failure (a throw from a timer, a leaked rejection, EIO on fsync): stage.test.ts.
test('server-receive: a toolkit program as handler runs in-process; a Failure it throws is the final status, every time', async () => {
  const s = await server({ handler: ['make-cert', 'server', '--ca', '/nonexistent', 'x.test'] });
  const c = await connect(s.port);
  for (let i = 0; i < 2; i++) assert.equal((await deliver(c, await message(basicFields()))).result?.word, 'TEMPFAIL');
  await c.done();
  await s.waitLog(/make-cert: \/nonexistent\/ca\.crt: no such file/);
});

test('server-receive: SIGTERM lets the message in flight finish, then says BYE and exits 0', async () => {
  const out = outDir();
  const s = await server({ handler: ['node', HANDLER, 'ok', out] });
  const c = await connect(s.port);
  const idle = await connect(s.port);
  const tar = await message(basicFields());
  c.sendMail(headersOf(tar), tar.length);
  assert.equal((await c.readAnswer()).word, 'ACCEPT');
  c.socket.write('DATA\n');
  c.socket.write(tar.subarray(0, 1000));
  const exited = new Promise<number | null>((res) => s.proc.once('exit', (code) => res(code)));
  s.proc.kill('SIGTERM');
  const bye = await idle.readAnswer();
  assert.equal(bye.word, 'BYE');
  assert.match(bye.text, /shutting down/);
  c.socket.write(tar.subarray(1000));
  assert.equal((await c.readResult()).word, 'OK');
  assert.equal((await c.readAnswer()).word, 'BYE');
  assert.equal(await exited, 0);
  assert.equal(readdirSync(out).filter((f) => f.endsWith('.ima')).length, 1);
});

test('server-receive: SIGTERM with pipelined messages still being delivered answers each of them, then says BYE', async () => {
  // Each handler says on stderr (the server's log) that it has the whole message, then waits for the test's go.
  const out = outDir();
  const go = join(out, 'go');
  const handler = join(out, 'handler.mjs');
  writeFileSync(
    handler,
    `import { existsSync, watch, writeFileSync } from 'node:fs';
    import { basename, dirname } from 'node:path';
    const [go, out] = process.argv.slice(2);
    const chunks = [];
    for await (const c of process.stdin) chunks.push(c);
    writeFileSync(out + '/' + process.pid + '.ima', Buffer.concat(chunks));
    console.error('have the message');
    await new Promise((ran) => {
      watch(dirname(go), (_e, name) => name === basename(go) && ran());
      setTimeout(() => process.exit(75), 10_000);
      if (existsSync(go)) ran();
    });
    console.log('OK bob@b.test');
    process.exit(0);
    `,
  );
  const s = await server({ handler: ['node', handler, go, out] });
  const c = await connect(s.port);
  for (let i = 0; i < 2; i++) {
    const tar = await message(basicFields());
    c.sendMail(headersOf(tar), tar.length);
    await c.sendData(tar, tar.length);
  }
  await s.waitLog(/have the message[\s\S]*have the message/);
  const exited = new Promise<number | null>((res) => s.proc.once('exit', (code) => res(code)));
  s.proc.kill('SIGTERM');
  await s.waitLog(/stopping: no new connections/);
  writeFileSync(go, 'go');
  for (let i = 0; i < 2; i++) {
    assert.equal((await c.readAnswer()).word, 'ACCEPT');
    assert.equal((await c.readResult()).word, 'OK', `message ${i + 1}`);
  }
  assert.equal((await c.readAnswer()).word, 'BYE');
  assert.equal(await exited, 0);
  assert.equal(readdirSync(out).filter((f) => f.endsWith('.ima')).length, 2);
});

test('server-receive: SIGHUP re-reads the config and the certificate files', async () => {
  const { pki, dir } = await import('../imdp-fixture.js');
  const { copyFileSync, writeFileSync } = await import('node:fs');
  const certFile = { cert: join(dir, 'reload.crt'), key: join(dir, 'reload.key') };
  const first = pki.server('b.test', { file: 'reload-1' });
  const second = pki.server('b.test', { file: 'reload-2' });
  copyFileSync(first.cert, certFile.cert);
  copyFileSync(first.key, certFile.key);
  const s = await server({ cert: certFile });
  // A plain TLS connection each time: an IMDP client would resume its last
  // session, and a resumed session carries no certificate to look at.
  const { connect: tlsConnect } = await import('node:tls');
  const fingerprint = () =>
    new Promise<string>((res, rej) => {
      const t = tlsConnect({ host: '127.0.0.1', port: s.port, servername: 'b.test', ca: readFileSync(pki.caFile) }, () => {
        res(t.getPeerX509Certificate()!.fingerprint256);
        t.destroy();
      });
      t.on('error', rej);
    });
  const before = await fingerprint();
  copyFileSync(second.cert, certFile.cert);
  copyFileSync(second.key, certFile.key);
  const configFile = /--config (\S+)/.exec(s.proc.spawnargs.join(' '))![1];
  writeFileSync(configFile, config({ cert: certFile, extra: '[limits]\nmax_message_bytes = 2048\n' }));
  s.proc.kill('SIGHUP');
  await s.waitLog(/reloaded configuration and certificates/);
  const after = await fingerprint();
  assert.notEqual(after, before);
  const c = await connect(s.port);
  const r = await deliver(c, await message(basicFields(), 'y'.repeat(3000)));
  assert.match(`${r.answer.status} ${r.answer.text}`, /^5\.3\.4 .*limit of 2048/);
  await c.done();
  writeFileSync(configFile, 'domain = 42\n');
  s.proc.kill('SIGHUP');
  await s.waitLog(/reload failed, keeping the old configuration: .*domain: must be a string/);
  assert.equal(await fingerprint(), after, 'still serving with the last good settings');
});

test('server-receive: refuses to start with a certificate that does not name its domain (exit 78, saying which names it has)', async () => {
  const file = join(outDir(), 'wrong-domain.toml');
  writeFileSync(file, config({ domain: 'c.test' }));
  const r = await runBin('server-receive', ['--config', file, '--listen', '127.0.0.1:0']);
  assert.equal(r.code, 78);
  assert.match(r.stderr, /tls\.certificate: .* does not cover domain c\.test \(it names DNS:b\.test\)/);
});
