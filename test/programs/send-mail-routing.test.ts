// send-mail's way per domain (DESIGN.md 8): config, then DNS SRV
// _imdp._tcp (RFC 2782 priority, weight, fall-back), else SMTP through
// smtp-send when legacy = "auto". Real server-receive instances, a real DNS
// server (dnsmasq), and smtp-send against smtp-sink for the legacy leg.
import assert from 'node:assert/strict';
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { type DnsServer, startDns } from '../dns-fixture.js';
import { freePort, runBin, runMain } from '../helpers.js';
import { HANDLER, type Server, certs, config, dir, message, outDir, pki, startServer } from '../imdp-fixture.js';
import { type Sink, smtpSinkMissing, startSink } from '../smtp-sink.js';

const servers: Server[] = [];
let dns: DnsServer;
let sink: Sink | undefined;
const out = { b1: outDir(), b2: outDir(), c1: outDir(), c2: outDir() };
let deadPort = 0;
let b1: Server;

async function server(domain: 'b.test' | 'c.test', o: string): Promise<Server> {
  const s = await startServer(config({ domain, cert: domain === 'b.test' ? certs.b : certs.c, handler: ['node', HANDLER, 'ok', o] }));
  servers.push(s);
  return s;
}

before(async () => {
  let b2: Server, c1: Server, c2: Server;
  [b1, b2, c1, c2] = await Promise.all([server('b.test', out.b1), server('b.test', out.b2), server('c.test', out.c1), server('c.test', out.c2)]);
  deadPort = await freePort();
  if (!smtpSinkMissing) sink = await startSink([]);
  dns = await startDns({
    srv: [
      // b.test: the first priority has a dead target beside a live one; the second priority is a spare.
      ['_imdp._tcp.b.test', 'dead.b.test', deadPort, 10, 50],
      ['_imdp._tcp.b.test', 'one.b.test', b1.port, 10, 50],
      ['_imdp._tcp.b.test', 'spare.b.test', b2.port, 20, 100],
      // c.test: two equal targets, equal weights.
      ['_imdp._tcp.c.test', 'one.c.test', c1.port, 10, 1],
      ['_imdp._tcp.c.test', 'two.c.test', c2.port, 10, 1],
      // legacy.test says "no IMDP here" with a lone "." target.
      ['_imdp._tcp.legacy.test', '.', 0, 0, 0],
    ],
    mx: [
      ['legacy.test', 'mx.legacy.test', 10],
      ['plain.test', 'mx.legacy.test', 10],
    ],
    hosts: [
      ['dead.b.test', '127.0.0.1'],
      ['one.b.test', '127.0.0.1'],
      ['spare.b.test', '127.0.0.1'],
      ['one.c.test', '127.0.0.1'],
      ['two.c.test', '127.0.0.1'],
      ['mx.legacy.test', '127.0.0.1'],
    ],
  });
});
after(async () => {
  await Promise.all([...servers.map((s) => s.stop()), dns?.stop(), sink?.stop()]);
});

let n = 0;
function sendMailConfig(extra = '', dnsServer = dns.server): string {
  const smtpSend = join(dir, `routing-smtp-send-${n}.toml`);
  writeFileSync(smtpSend, `dns_servers = ["${dns.server}"]\nmx_port = ${sink?.port ?? 1}\n`);
  const file = join(dir, `routing-send-mail-${n++}.toml`);
  writeFileSync(
    file,
    `domain = "a.test"
dns_servers = ["${dnsServer}"]
legacy_command = ["smtp-send", "--config", "${smtpSend}"]
${extra}
[tls]
certificate = "${certs.a.cert}"
key = "${certs.a.key}"
ca = ["${pki.caFile}"]
[timeouts]
connect = "5s"
`,
  );
  return file;
}

const fields = (to: string): [string, string][] => [
  ['from', 'alice@a.test'],
  ['to', to],
  ['subject', 'routing'],
];
const count = (d: string) => readdirSync(d).filter((f) => f.endsWith('.ima')).length;

test('send-mail: SRV targets by priority, the next target when one is down; the lower priority only when the first is all down', async () => {
  const cfg = sendMailConfig();
  for (let i = 0; i < 3; i++) {
    const r = await runMain('send-mail', ['--config', cfg], { input: await message(fields('bob@b.test')) });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.toString(), 'OK bob@b.test\n');
  }
  assert.equal(count(out.b1), 3);
  assert.equal(count(out.b2), 0);
  // Priority 10 all down (the live one stopped too): priority 20 takes it.
  await b1.stop();
  const r = await runMain('send-mail', ['--config', cfg], { input: await message(fields('bob@b.test')) });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(count(out.b2), 1);
});

test('send-mail: equal priority and weight: both targets get messages (RFC 2782 random selection, not always the first)', async () => {
  const cfg = sendMailConfig();
  for (let i = 0; i < 16; i++) {
    const r = await runMain('send-mail', ['--config', cfg], { input: await message(fields('carol@c.test')) });
    assert.equal(r.code, 0, r.stderr);
  }
  const [c1, c2] = [count(out.c1), count(out.c2)];
  assert.equal(c1 + c2, 16);
  // One side empty has probability 2^-15: this fails when selection is not random.
  assert.ok(c1 > 0 && c2 > 0, `one.c.test got ${c1}, two.c.test got ${c2}`);
});

test('send-mail: a "." SRV target or no SRV record goes to smtp-send (legacy = "auto"), which delivers by MX', { skip: smtpSinkMissing }, async () => {
  const r = await runBin('send-mail', ['--config', sendMailConfig()], { input: await message(fields('x@legacy.test, y@plain.test')) });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout.toString().trim().split('\n').sort(), ['OK x@legacy.test', 'OK y@plain.test']);
});

test('send-mail: legacy = "never": a "." SRV target is FAIL, no SRV means the domain itself; nothing is sent when one domain fails', async () => {
  const r = await runMain('send-mail', ['--config', sendMailConfig('legacy = "never"')], { input: await message(fields('x@legacy.test, bob@b.test')) });
  // x@legacy.test fails for good; bob@b.test was only held back by it (all or none), so it may be retried.
  assert.equal(r.code, 75, r.stderr);
  const lines = r.stdout.toString().trim().split('\n').sort();
  assert.match(lines[0], /^FAIL x@legacy\.test legacy\.test: its _imdp\._tcp SRV record says it has no IMDP server, and legacy = "never"/);
  assert.match(lines[1], /^TEMPFAIL bob@b\.test not sent: legacy\.test refused/);
  const r2 = await runMain('send-mail', ['--config', sendMailConfig('legacy = "never"')], { input: await message(fields('y@plain.test')) });
  assert.equal(r2.code, 75, r2.stderr);
  assert.match(r2.stdout.toString(), /^TEMPFAIL y@plain\.test plain\.test: no address \(A\/AAAA\)/);
});

test('send-mail: DNS that does not answer is TEMPFAIL for the domain, never a guess at SMTP', async () => {
  const silent = '127.0.0.1:9';
  const r = await runMain('send-mail', ['--config', sendMailConfig('', silent)], { input: await message(fields('carol@c.test')) });
  assert.equal(r.code, 75, r.stderr);
  assert.match(r.stdout.toString(), /^TEMPFAIL carol@c\.test c\.test: SRV lookup of _imdp\._tcp\.c\.test failed/);
});
