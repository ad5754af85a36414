import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, test } from 'node:test';
import { readMessage } from '../../src/message/index.js';
import { processGoneSoon, runBin, testEnv } from '../helpers.js';
import { HANDLER, type Server, certs, config, dir, message, outDir, pki, startServer } from '../imdp-fixture.js';

const servers: Server[] = [];
after(async () => Promise.all(servers.map((s) => s.stop())));

async function server(domain: 'b.test' | 'c.test', out: string, check: string[] = []) {
  const s = await startServer(config({ domain, cert: certs[domain === 'b.test' ? 'b' : 'c'], handler: ['node', HANDLER, 'ok', out], check }));
  servers.push(s);
  return s;
}

let n = 0;
function sendMailConfig(table: Record<string, string>, extra = ''): string {
  const file = join(dir, `send-mail-${n++}.toml`);
  writeFileSync(
    file,
    `domain = "a.test"
dns_srv = false
${extra}
[tls]
certificate = "${certs.a.cert}"
key = "${certs.a.key}"
ca = ["${pki.caFile}"]
[servers]
${Object.entries(table)
  .map(([d, t]) => `"${d}" = "${t}"`)
  .join('\n')}
`,
  );
  return file;
}

const fields = (extra: [string, string][] = []): [string, string][] => [
  ['from', 'alice@a.test'],
  ['to', 'bob@b.test, carol@c.test'],
  ['bcc', 'dave@b.test, erin@c.test'],
  ['subject', 'two domains'],
  ...extra,
];

async function stored(out: string) {
  const files = readdirSync(out).filter((f) => f.endsWith('.ima'));
  return Promise.all(
    files.map(async (f) => {
      const it = readMessage(Readable.from([readFileSync(join(out, f))]));
      const first = await it.next();
      if (first.done || first.value.kind !== 'headers') throw new Error('no headers');
      const h = first.value.headers;
      let body = '';
      for await (const e of it) if (e.kind === 'body') for await (const c of e.stream) body += c;
      return { h, body };
    }),
  );
}

/** A receiving server for b.test and one for c.test, each storing into a directory of its own, and a send-mail config routing to both. */
async function twoDomains(): Promise<{ outB: string; outC: string; cfg: string }> {
  const outB = outDir();
  const outC = outDir();
  const b = await server('b.test', outB);
  const c = await server('c.test', outC);
  return { outB, outC, cfg: sendMailConfig({ 'b.test': `127.0.0.1:${b.port}`, 'c.test': `127.0.0.1:${c.port}` }) };
}

test('send-mail: two domains, each gets only its own bcc; mailer, date and message-id are set; one line per recipient', async () => {
  const { outB, outC, cfg } = await twoDomains();
  const blind: [string, string][] = [
    ['mime-header', 'Bcc: frank@c.test'],
    ['mime-bcc', 'Team: gina@c.test;'],
    ['resent-bcc', 'hank@c.test'],
  ];
  const r = await runBin('send-mail', ['--config', cfg], { input: await message(fields(blind), 'Hi all.\n') });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout.toString().trim().split('\n').sort(), ['OK bob@b.test', 'OK carol@c.test', 'OK dave@b.test', 'OK erin@c.test']);
  const [atB] = await stored(outB);
  const [atC] = await stored(outC);
  assert.equal(atB.h.get('bcc'), 'dave@b.test');
  assert.equal(atC.h.get('bcc'), 'erin@c.test');
  assert.doesNotMatch(atB.h.serialize().toString(), /erin/);
  assert.doesNotMatch(atC.h.serialize().toString(), /dave/);
  // Other forms of a hidden list (a legacy message's second Bcc, Bcc group, Resent-Bcc) reach no domain.
  for (const m of [atB, atC]) assert.doesNotMatch(m.h.serialize().toString(), /frank|gina|hank/);
  for (const m of [atB, atC]) {
    assert.equal(m.h.get('mailer'), 'a.test');
    assert.match(m.h.get('message-id')!, /^urn:uuid:[0-9a-f-]{36}$/);
    assert.match(m.h.get('date')!, /^\d{4}-\d\d-\d\dT/);
    assert.equal(m.body, 'Hi all.\n');
  }
  assert.equal(atB.h.get('message-id'), atC.h.get('message-id'));
});

test('send-mail: a [servers] key written in capitals is the domain it names (domains are compared in lower case)', async () => {
  const outB = outDir();
  const b = await server('b.test', outB);
  const cfg = sendMailConfig({ 'B.TEST': `127.0.0.1:${b.port}` });
  const r = await runBin('send-mail', ['--config', cfg], {
    input: await message([
      ['from', 'alice@a.test'],
      ['to', 'bob@b.test'],
      ['subject', 'capitals'],
    ]),
  });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.toString(), 'OK bob@b.test\n');
  assert.equal((await stored(outB)).length, 1);
});

test('send-mail: a 5 MiB message to two domains at once arrives byte for byte at both (the spool read through reused buffers)', async () => {
  const { outB, outC, cfg } = await twoDomains();
  // Random text: a chunk written from a buffer already refilled with later bytes could not go unnoticed.
  const body = `${randomBytes(3_900_000).toString('base64').replace(/.{76}/g, '$&\n')}\n`;
  const r = await runBin('send-mail', ['--config', cfg], { input: await message(fields(), body) });
  assert.equal(r.code, 0, r.stderr);
  const [atB] = await stored(outB);
  const [atC] = await stored(outC);
  assert.ok(atB.body === body, 'b.test got the body byte for byte');
  assert.ok(atC.body === body, 'c.test got the body byte for byte');
});

test('send-mail: one domain refuses for good: its recipients FAIL, the others TEMPFAIL (not sent, retry may go), exit 75; no handler runs', async () => {
  const outB = outDir();
  const outC = outDir();
  const check = join(dir, 'refuse-all.mjs');
  writeFileSync(check, "for await (const _ of process.stdin); console.log('NORECIPIENT carol@c.test'); process.exit(1);\n");
  const b = await server('b.test', outB);
  const c = await server('c.test', outC, ['node', check]);
  const cfg = sendMailConfig({ 'b.test': `127.0.0.1:${b.port}`, 'c.test': `127.0.0.1:${c.port}` });
  const r = await runBin('send-mail', ['--config', cfg], { input: await message(fields()) });
  assert.equal(r.code, 75, r.stderr);
  const lines = r.stdout.toString().trim().split('\n');
  const line = (a: string) => lines.find((l) => l.split(' ')[1] === a) ?? '';
  assert.equal(lines.length, 4);
  for (const a of ['carol@c.test', 'erin@c.test']) assert.match(line(a), new RegExp(`^FAIL ${a} c\\.test: REJECT 5\\.1\\.1 .*NORECIPIENT carol@c\\.test`));
  for (const a of ['bob@b.test', 'dave@b.test']) assert.match(line(a), new RegExp(`^TEMPFAIL ${a} not sent: c\\.test refused`));
  assert.deepEqual(readdirSync(outB), []);
  assert.deepEqual(readdirSync(outC), []);
  // The other server unreachable (temporary) beside the refusal for good: each keeps its own class.
  const net = await import('node:net');
  const closed = net.createServer();
  await new Promise<void>((res) => closed.listen(0, '127.0.0.1', () => res()));
  const deadPort = (closed.address() as { port: number }).port;
  closed.close();
  const cfg2 = sendMailConfig({ 'b.test': `127.0.0.1:${deadPort}`, 'c.test': `127.0.0.1:${c.port}` });
  const r2 = await runBin('send-mail', ['--config', cfg2], { input: await message(fields()) });
  assert.equal(r2.code, 75, r2.stderr);
  assert.match(r2.stdout.toString(), /^TEMPFAIL bob@b\.test .*ECONNREFUSED/m);
  assert.match(r2.stdout.toString(), /^FAIL carol@c\.test c\.test: REJECT 5\.1\.1/m);
});

test('send-mail: an unreachable server or one whose certificate does not cover the domain is TEMPFAIL (75), nothing sent', async () => {
  const outB = outDir();
  const b = await server('b.test', outB);
  const net = await import('node:net');
  const closed = net.createServer();
  await new Promise<void>((res) => closed.listen(0, '127.0.0.1', () => res()));
  const deadPort = (closed.address() as { port: number }).port;
  closed.close();
  let cfg = sendMailConfig({ 'b.test': `127.0.0.1:${b.port}`, 'c.test': `127.0.0.1:${deadPort}` });
  let r = await runBin('send-mail', ['--config', cfg], { input: await message(fields()) });
  assert.equal(r.code, 75, r.stderr);
  assert.match(r.stdout.toString(), /^TEMPFAIL carol@c\.test .*ECONNREFUSED/m);
  cfg = sendMailConfig({ 'b.test': `127.0.0.1:${b.port}`, 'c.test': `127.0.0.1:${b.port}` });
  r = await runBin('send-mail', ['--config', cfg], { input: await message(fields()) });
  assert.equal(r.code, 75, r.stderr);
  assert.match(r.stdout.toString(), /^TEMPFAIL carol@c\.test .*certificate does not cover c\.test/m);
  assert.deepEqual(readdirSync(outB), []);
});

test('send-mail: a legacy domain goes to the configured command with its recipients as arguments', async () => {
  const outB = outDir();
  const b = await server('b.test', outB);
  const legacyOut = join(outDir(), 'legacy.ima');
  const legacy = join(dir, 'legacy.mjs');
  writeFileSync(
    legacy,
    `import { writeFileSync } from 'node:fs'; const c = []; for await (const x of process.stdin) c.push(x);
writeFileSync(${JSON.stringify(legacyOut)}, Buffer.concat(c)); for (const a of process.argv.slice(2)) console.log('OK ' + a);\n`,
  );
  const cfg = sendMailConfig({ 'b.test': `127.0.0.1:${b.port}` }, `legacy_domains = ["c.test"]\nlegacy_command = ["node", ${JSON.stringify(legacy)}]`);
  const r = await runBin('send-mail', ['--config', cfg], { input: await message(fields()) });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout.toString().trim().split('\n').sort(), ['OK bob@b.test', 'OK carol@c.test', 'OK dave@b.test', 'OK erin@c.test']);
  assert.match(readFileSync(legacyOut).toString('latin1'), /bcc: erin@c\.test\n/);
});

test('send-mail: a legacy command that hangs is killed at timeouts.legacy with what it started; its recipients TEMPFAIL, whatever it said', async () => {
  const outB = outDir();
  const b = await server('b.test', outB);
  const pidFile = join(outDir(), 'legacy.pid');
  // It even says OK for both before it hangs: killed, that is no OK.
  const script = `sleep 60 & echo $! > ${pidFile}; cat > /dev/null; for a in "$0" "$@"; do echo "OK $a"; done; wait`;
  const cfg = sendMailConfig(
    { 'b.test': `127.0.0.1:${b.port}` },
    `legacy_domains = ["c.test"]\nlegacy_command = ["sh", "-c", ${JSON.stringify(script)}]\n[timeouts]\nlegacy = "1s"`,
  );
  const started = Date.now();
  const r = await runBin('send-mail', ['--config', cfg], { input: await message(fields()) });
  assert.ok(Date.now() - started < 30_000, 'ended at the timeout');
  assert.equal(r.code, 2, r.stderr);
  assert.deepEqual(
    r.stdout
      .toString()
      .trim()
      .split('\n')
      .map((l) => l.split(' ').slice(0, 2).join(' '))
      .sort(),
    ['OK bob@b.test', 'OK dave@b.test', 'TEMPFAIL carol@c.test', 'TEMPFAIL erin@c.test'],
  );
  assert.ok(await processGoneSoon(pidFile), 'the child the legacy command left is killed');
});

test('send-mail: bad input is refused with a clear line and the right code', async () => {
  const cfg = sendMailConfig({});
  let r = await runBin('send-mail', ['--config', cfg], { input: 'not a tar' });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /send-mail: /);
  r = await runBin('send-mail', ['--config', cfg, '/nonexistent.ima']);
  assert.equal(r.code, 66);
  assert.match(r.stderr, /\/nonexistent\.ima: no such file/);
  // A directory opens; only reading it fails, which must not pass for trouble worth retrying.
  r = await runBin('send-mail', ['--config', cfg, '/tmp']);
  assert.equal(r.code, 66);
  assert.match(r.stderr, /\/tmp: is a directory/);
  r = await runBin('send-mail', ['--config', cfg], { input: await message(fields([['mailer', 'evil.test']])) });
  assert.equal(r.code, 65);
  assert.match(r.stderr, /mailer: the message says evil\.test, but this send-mail sends as a\.test/);
  r = await runBin('send-mail', [], { env: testEnv() });
  assert.equal(r.code, 78);
  // Its own certificate must name its domain: every server would refuse it otherwise.
  const wrongCert = sendMailConfig({}).replace(/\.toml$/, '-wrong.toml');
  writeFileSync(wrongCert, readFileSync(cfg, 'utf8').replace('domain = "a.test"', 'domain = "d.test"'));
  r = await runBin('send-mail', ['--config', wrongCert], { input: await message(fields()) });
  assert.equal(r.code, 78);
  assert.match(r.stderr, /tls\.certificate: .* does not cover domain d\.test \(it names DNS:a\.test\)/);
});

test('spool: one reader stopping early does not break the others (no shared fd is closed)', async () => {
  const { Spool } = await import('../../src/spool.js');
  const big = Buffer.alloc(3 * 1024 * 1024, 1);
  const spool = await Spool.from(Readable.from([big]), { memoryMax: 1024 });
  const a = spool.open() as Readable;
  for await (const _ of a) break; // destroys the stream
  let n = 0;
  for await (const c of spool.open(1000) as Readable) n += (c as Buffer).length;
  assert.equal(n, big.length - 1000);
  await spool.dispose();
});
