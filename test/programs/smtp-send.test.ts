import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable, type Writable } from 'node:stream';
import { after, before, test } from 'node:test';
import { reportFailure } from '../../src/failure.js';
import { Headers, bufferPart, writeMessage } from '../../src/message/index.js';
import { dkimRecordText, loadDkimKeys } from '../../src/smtp/dkim.js';
import { type DnsServer, type Zone, startDns } from '../dns-fixture.js';
import { loadProgram } from '../../src/programs/index.js';
import { type Result, runBin, runCommand, runMain, tempDir, testEnv } from '../helpers.js';
import { Pki } from '../pki.js';
import { type Postfix, postfixUnavailable, startPostfix } from '../postfix-fixture.js';
import { type Sink, smtpSinkMissing, startSink } from '../smtp-sink.js';

const dir = tempDir('ima-smtp-send-');
const pki = new Pki(dir, 'smtp');
const mxCert = pki.server('mx.b.test', { also: ['relay.b.test'] });

// DKIM keys of a.test: one RSA, one Ed25519 (RFC 8463), published through dnsmasq.
const rsaKey = join(dir, 'dkim-rsa.key');
const edKey = join(dir, 'dkim-ed.key');
writeFileSync(rsaKey, generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
writeFileSync(edKey, generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }));
const dkimToml = `[[dkim]]
domain = "a.test"
selector = "rsa2026"
key = "${rsaKey}"
[[dkim]]
domain = "a.test"
selector = "ed2026"
key = "${edKey}"
`;
const dkimKeys = loadDkimKeys(
  [
    { domain: 'a.test', selector: 'rsa2026', key: rsaKey },
    { domain: 'a.test', selector: 'ed2026', key: edKey },
  ],
  { dir },
  'test',
);

const zone: Zone = {
  mx: [
    ['b.test', 'mx.b.test', 10],
    ['sink.test', 'mx.sink.test', 10],
    ['two.test', 'dead.two.test', 10],
    ['two.test', 'live.two.test', 20],
    ['null.test', '.', 0],
    // An MX host that does not exist: nowhere to send, for good.
    ['gone.test', 'mx.gone.test', 10],
  ],
  hosts: [
    ['mx.b.test', '127.0.0.1'],
    ['relay.b.test', '127.0.0.1'],
    ['mx.sink.test', '127.0.0.1'],
    ['dead.two.test', '127.0.0.2'],
    ['live.two.test', '127.0.0.1'],
  ],
  txt: [
    ...dkimKeys.map((k) => [`${k.selector}._domainkey.a.test`, dkimRecordText(k)] as [string, string]),
    // A domain that exists (it has a TXT record) with no MX and no address: its implicit MX is unusable.
    ['bare.test', 'v=spf1 -all'],
  ],
};

let dns: DnsServer;
let postfix: Postfix | undefined;
const skipPostfix = postfixUnavailable();
const sinks: Sink[] = [];

before(async () => {
  dns = await startDns(zone);
  if (!skipPostfix)
    postfix = await startPostfix({
      hostname: 'mx.b.test',
      mailboxes: ['bob@b.test', 'carol@b.test'],
      tempfail: { 'busy@b.test': '451 4.2.1 mailbox busy' },
      tls: mxCert,
      main: { smtpd_tls_received_header: 'yes' },
    });
});
after(async () => {
  await Promise.all([dns?.stop(), postfix?.stop(), ...sinks.map((s) => s.stop())]);
});

let n = 0;
function config(port: number, extra = ''): string {
  const file = join(dir, `smtp-send-${n++}.toml`);
  writeFileSync(file, `helo = "out.a.test"\ndns_servers = ["${dns.server}"]\nmx_port = ${port}\n${extra}\n[timeouts]\nconnect = "5s"\ncommand = "20s"\n`);
  return file;
}

async function message(fields: [string, string][], body = 'Hello Bob.\n', attachments: Record<string, string> = {}): Promise<Buffer> {
  const h = new Headers();
  for (const [k, v] of fields) h.add(k, v);
  const out = new PassThrough();
  const parts: Buffer[] = [];
  out.on('data', (c: Buffer) => parts.push(c));
  await writeMessage(out, {
    headers: h,
    body: bufferPart(Buffer.from(body)),
    attachments: Object.entries(attachments).map(([name, text]) => ({ name, ...bufferPart(Buffer.from(text)) })),
  });
  return Buffer.concat(parts);
}

const FIELDS: [string, string][] = [
  ['from', 'Alice <alice@a.test>'],
  ['to', 'bob@b.test'],
  ['cc', 'carol@b.test'],
  ['bcc', 'secret@b.test'],
  ['subject', 'Quarterly report'],
  ['date', '2026-11-23T10:00:00+01:00'],
  ['message-id', 'urn:uuid:6f2b8a4e-1c3d-4e5f-8a9b-0c1d2e3f4a5b'],
  ['mailer', 'a.test'],
];

const lines = (out: Buffer) => out.toString().trim().split('\n').sort();

/** dkimpy's verdict on each of a message's two signatures, with the keys our dnsmasq publishes: "True rsa-sha256" and the like, sorted. */
async function dkimVerdicts(message: string | Buffer): Promise<{ verdicts: string[]; log: string }> {
  const file = join(dir, `signed-${n++}.eml`);
  writeFileSync(file, message);
  const verify = `
import sys, logging, dkim, dns.resolver
logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
r = dns.resolver.Resolver(configure=False)
r.nameservers = ['127.0.0.1']
r.port = ${dns.port}
r.timeout = 5
r.lifetime = 30
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    return b''.join(b''.join(rd.strings) for rd in r.resolve(name, 'TXT'))
msg = open(sys.argv[1], 'rb').read()
d = dkim.DKIM(msg, logger=logging.getLogger('dkim'))
for i in range(2):
    print(d.verify(idx=i, dnsfunc=dnsfunc), d.signature_fields.get(b'a').decode())
`;
  const py = await runCommand('/usr/bin/python3', ['-c', verify, file]);
  assert.equal(py.code, 0, py.stderr);
  return { verdicts: py.stdout.toString().trim().split('\n').sort(), log: py.stderr };
}

/** smtp-send in-process, a thrown failure reported as the launcher does (one line, its exit code). */
async function inProcess(args: string[], opts: { input?: Buffer | string } = {}): Promise<Result> {
  try {
    return await runMain('smtp-send', args, opts);
  } catch (e) {
    let stderr = '';
    const code = reportFailure({ stderr: { write: (s: string) => (stderr += s) } as unknown as Writable }, 'smtp-send', e);
    return { code, stdout: Buffer.alloc(0), stderr };
  }
}

test(
  'smtp-send: to Postfix by MX over STARTTLS: OK, FAIL (5xx) and TEMPFAIL (4xx) per recipient, exit 2; the Maildir copy has no bcc',
  { skip: skipPostfix },
  async () => {
    const cfg = config(postfix!.port);
    const r = await runBin('smtp-send', ['--config', cfg, 'bob@b.test', 'carol@b.test', 'nobody@b.test', 'busy@b.test'], {
      input: await message(FIELDS, 'Hello Bob.\n', { 'q3.txt': 'numbers\n' }),
    });
    assert.equal(r.code, 2, r.stderr);
    const out = r.stdout.toString().trim().split('\n');
    assert.deepEqual(out.slice(0, 2), ['OK bob@b.test', 'OK carol@b.test']);
    assert.match(out[3], /^TEMPFAIL busy@b\.test 4\.2\.1 mx\.b\.test\[127\.0\.0\.1\]:\d+ said: 451 4\.2\.1 .*mailbox busy/);
    assert.match(out[2], /^FAIL nobody@b\.test 5\.1\.1 mx\.b\.test\[127\.0\.0\.1\]:\d+ said: 550 5\.1\.1 <nobody@b\.test>/);
    const [copy] = await postfix!.waitFor('bob@b.test', 1);
    assert.match(copy, /^Received: from out\.a\.test .*\n\s+\(using TLSv1\.[23]/m);
    assert.match(copy, /^Subject: Quarterly report\r?$/m);
    assert.match(copy, /^From: Alice <alice@a\.test>\r?$/m);
    assert.match(copy, /^Message-ID: <6f2b8a4e-1c3d-4e5f-8a9b-0c1d2e3f4a5b@/m);
    assert.match(copy, /filename=q3\.txt/);
    assert.match(copy, /Hello Bob\./);
    assert.doesNotMatch(copy, /^Bcc:|secret@/im);
    assert.equal((await postfix!.waitFor('carol@b.test', 1)).length, 1);
  },
);

test(
  'smtp-send: DKIM signatures (RSA and Ed25519) verified by dkimpy with the keys published in DNS; --dkim-record prints them',
  { skip: skipPostfix },
  async () => {
    const cfg = config(postfix!.port, dkimToml);
    const before = postfix!.maildir('bob@b.test').length;
    const r = await inProcess(['--config', cfg, 'bob@b.test'], {
      input: await message(FIELDS, 'Signed.\n\nWith an ä and a line\nstarting with From me.\n'),
    });
    assert.equal(r.code, 0, r.stderr);
    const copies = await postfix!.waitFor('bob@b.test', before + 1);
    const signed = copies.find((c) => c.includes('Signed.'))!;
    assert.equal((signed.match(/^DKIM-Signature:/gm) ?? []).length, 2);
    const py = await dkimVerdicts(signed);
    assert.deepEqual(py.verdicts, ['True ed25519-sha256', 'True rsa-sha256'], `dkimpy said:\n${py.log}\nof:\n${signed}`);
    // The records to publish are what the test published, and say what each key is.
    const rec = await inProcess(['--config', cfg, '--dkim-record', 'a.test']);
    assert.equal(rec.code, 0, rec.stderr);
    const text = rec.stdout.toString();
    assert.match(text, /^rsa2026\._domainkey\.a\.test\. IN TXT \( "v=DKIM1; k=rsa; p=/m);
    assert.match(text, /^ed2026\._domainkey\.a\.test\. IN TXT \( "v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=" \)$/m);
  },
);

test('smtp-send: a smarthost over STARTTLS, its certificate verified against tls_ca', { skip: skipPostfix }, async () => {
  const before = postfix!.maildir('carol@b.test').length;
  const cfg = config(1, `tls_ca = ["${pki.caFile}"]\n[smarthost]\nhost = "relay.b.test:${postfix!.port}"\ntls = "starttls"`);
  const r = await runMain('smtp-send', ['--config', cfg, 'carol@b.test'], { input: await message(FIELDS) });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(lines(r.stdout), ['OK carol@b.test']);
  await postfix!.waitFor('carol@b.test', before + 1);
  // The same smarthost without the CA that signed its certificate: not trusted, so nothing is sent.
  const untrusted = config(1, `[smarthost]\nhost = "relay.b.test:${postfix!.port}"\ntls = "starttls"`);
  const r2 = await runMain('smtp-send', ['--config', untrusted, 'carol@b.test'], { input: await message(FIELDS) });
  assert.equal(r2.code, 75, r2.stderr);
  assert.match(r2.stdout.toString(), /^TEMPFAIL carol@b\.test 4\.4\.1 no host took the message: relay\.b\.test\[127\.0\.0\.1\]:\d+: .*certificate/m);
});

async function sink(flags: string[]): Promise<Sink> {
  const s = await startSink(flags);
  sinks.push(s);
  return s;
}

test(
  'smtp-send: smtp-sink answering 5xx to RCPT is FAIL (exit 1), 4xx is TEMPFAIL (exit 75), a dropped connection TEMPFAIL',
  { skip: smtpSinkMissing },
  async () => {
    const input = await message(FIELDS);
    const hard = await sink(['-f', 'rcpt']);
    let r = await inProcess(['--config', config(hard.port), 'x@sink.test', 'y@sink.test'], { input });
    assert.equal(r.code, 1, r.stderr);
    assert.deepEqual(
      lines(r.stdout).map((l) => l.replace(/\[127.0.0.1\]:\d+/, '')),
      [
        'FAIL x@sink.test 5.3.0 mx.sink.test said: 500 5.3.0 Error: command failed',
        'FAIL y@sink.test 5.3.0 mx.sink.test said: 500 5.3.0 Error: command failed',
      ],
    );
    const soft = await sink(['-r', 'rcpt']);
    r = await inProcess(['--config', config(soft.port), 'x@sink.test'], { input });
    assert.equal(r.code, 75, r.stderr);
    assert.match(r.stdout.toString(), /^TEMPFAIL x@sink\.test 4\.3\.0 mx\.sink\.test\[127\.0\.0\.1\]:\d+ said: 450 4\.3\.0/);
    const drop = await sink(['-q', 'data']);
    r = await inProcess(['--config', config(drop.port), 'x@sink.test'], { input });
    assert.equal(r.code, 75, r.stderr);
    assert.match(r.stdout.toString(), /^TEMPFAIL x@sink\.test 4\.4\.2 .*(closed|ECONNRESET)/i);
    const hardData = await sink(['-f', 'data']);
    r = await inProcess(['--config', config(hardData.port), 'x@sink.test'], { input });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stdout.toString(), /^FAIL x@sink\.test 5\.3\.0 /);
  },
);

/** smtp-sink dumping every transaction it takes into a fresh directory; the dumps (envelope as X- lines, then the message, CRLF), oldest first. */
async function dumpingSink(flags: string[]): Promise<{ sink: Sink; dumps: () => Buffer[] }> {
  // smtp-sink drops to nobody when run as root: the directory must be open to it.
  const dumpDir = mkdtempSync(join(tmpdir(), 'ima-sink-dump-'));
  chmodSync(dumpDir, 0o777);
  const s = await sink([...flags, '-d', `${dumpDir}/%M.`]);
  // smtp-sink writes its dumps with LF line ends: back to the CRLF of the wire.
  const crlf = (b: Buffer) => Buffer.from(b.toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1');
  return {
    sink: s,
    dumps: () =>
      readdirSync(dumpDir)
        .sort()
        .map((f) => crlf(readFileSync(join(dumpDir, f)))),
  };
}

/** The decoded content of the base64 part named `name` in a MIME message (CRLF). */
function base64Part(mime: string, name: string): Buffer {
  const m = new RegExp(`name=${name.replace('.', '\\.')}[^]*?\\r\\n\\r\\n([A-Za-z0-9+/=\\r\\n]+)\\r\\n--`).exec(mime);
  assert.ok(m, `no base64 part ${name} in:\n${mime}`);
  return Buffer.from(m[1].replace(/\r\n/g, ''), 'base64');
}

test(
  'smtp-send: an attached message in 8bit goes as message/rfc822 with BODY=8BITMIME; to a server without 8BITMIME, in base64 as application/octet-stream, nothing 8bit, DKIM valid',
  { skip: smtpSinkMissing },
  async () => {
    const inner =
      'From: Carol <carol@c.test>\r\nSubject: Gr\u00fc\u00dfe\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGr\u00fc\u00dfe aus K\u00f6ln.\r\n';
    const input = await message(FIELDS, 'Forwarded.\n', { 'inner.eml': inner });
    const eight = await dumpingSink([]);
    let r = await inProcess(['--config', config(eight.sink.port, dkimToml), 'x@sink.test'], { input });
    assert.equal(r.code, 0, r.stderr);
    const [asMessage] = eight.dumps();
    assert.match(asMessage.toString('latin1'), /^X-Mail-Args: <alice@a\.test> BODY=8BITMIME/m);
    assert.match(asMessage.toString('latin1'), /^Content-Type: message\/rfc822; name=inner\.eml\r\nContent-Transfer-Encoding: 8bit/m);
    assert.ok(asMessage.includes(Buffer.from(inner)), 'the attached message is there byte for byte');

    const seven = await dumpingSink(['-8']);
    r = await inProcess(['--config', config(seven.sink.port, dkimToml), 'x@sink.test'], { input });
    assert.equal(r.code, 0, r.stderr);
    const [plain] = seven.dumps();
    const text = plain.toString('latin1');
    assert.match(text, /^X-Mail-Args: <alice@a\.test>\r$/m);
    assert.ok(!plain.some((b) => b > 0x7f), `8bit data sent to a server without 8BITMIME:\n${text}`);
    assert.match(text, /^Content-Type: application\/octet-stream; name=inner\.eml\r\nContent-Transfer-Encoding: base64/m);
    assert.deepEqual(base64Part(text, 'inner.eml'), Buffer.from(inner));
    // Signed as sent: the 7bit form has signatures of its own.
    const py = await dkimVerdicts(plain);
    assert.deepEqual(py.verdicts, ['True ed25519-sha256', 'True rsa-sha256'], `dkimpy said:\n${py.log}\nof:\n${text}`);
  },
);

test(
  'smtp-send: a non-ASCII address or UTF-8 in the header fields needs SMTPUTF8: refused for good (5.6.7) by a server without it, nothing sent; Postfix, which offers it, takes both',
  { skip: smtpSinkMissing || skipPostfix },
  async () => {
    const withoutUtf8 = await dumpingSink([]); // smtp-sink does not offer SMTPUTF8
    const ascii = await message(FIELDS);
    let r = await inProcess(['--config', config(withoutUtf8.sink.port), 'zo\u00eb@sink.test'], { input: ascii });
    assert.equal(r.code, 1, r.stderr);
    assert.match(
      r.stdout.toString(),
      /^FAIL zo\u00eb@sink\.test 5\.6\.7 mx\.sink\.test\[127\.0\.0\.1\]:\d+ does not offer SMTPUTF8, which this message needs \(a non-ASCII address\)$/m,
    );
    const utf8To = FIELDS.map(([k, v]): [string, string] => [k, k === 'to' ? 'Zo\u00eb <zo\u00eb@b.test>' : v]);
    r = await inProcess(['--config', config(withoutUtf8.sink.port), 'x@sink.test'], { input: await message(utf8To) });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stdout.toString(), /^FAIL x@sink\.test 5\.6\.7 .* \(UTF-8 in its header fields\)$/m);
    assert.deepEqual(withoutUtf8.dumps(), [], 'nothing may reach a server that did not agree to UTF-8');

    const cfg = config(postfix!.port);
    const before = postfix!.maildir('bob@b.test').length;
    r = await inProcess(['--config', cfg, 'bob@b.test'], { input: await message(utf8To, 'To Zo\u00eb.\n') });
    assert.equal(r.code, 0, r.stderr);
    const utf8From = FIELDS.map(([k, v]): [string, string] => [k, k === 'from' ? 'J\u00f6rg <j\u00f6rg@a.test>' : v]);
    r = await inProcess(['--config', cfg, 'bob@b.test'], { input: await message(utf8From, 'From J\u00f6rg.\n') });
    assert.equal(r.code, 0, r.stderr);
    const copies = await postfix!.waitFor('bob@b.test', before + 2);
    // The display name is encoded (RFC 2047); the address cannot be, and goes as UTF-8 (RFC 6532).
    assert.match(
      copies.find((c) => c.includes('To Zo'))!,
      /^To: =\?UTF-8\?Q\?Zo=C3=AB\?= <zo\u00eb@b\.test>\r?$/m,
    );
    // The envelope sender went as it is, with SMTPUTF8 on MAIL FROM: Postfix's Return-Path is what MAIL FROM said, its Received says UTF8SMTPS.
    const fromJorg = copies.find((c) => c.includes('From J'))!;
    assert.match(fromJorg, /^Return-Path: <j\u00f6rg@a\.test>\r?$/m);
    assert.match(fromJorg, /with UTF8SMTPS id/);
  },
);

test(
  'smtp-send: the first MX refuses connections, the second takes the message; null MX, NXDOMAIN and mail hosts without an address are FAIL; no DNS answer is TEMPFAIL',
  { skip: smtpSinkMissing },
  async () => {
    const ok = await sink([]);
    const input = await message(FIELDS);
    let r = await inProcess(['--config', config(ok.port), '--verbose', 'x@two.test'], { input });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(lines(r.stdout), ['OK x@two.test']);
    assert.match(r.stderr, /dead\.two\.test\[127\.0\.0\.2\]:\d+: .*ECONNREFUSED.*trying the next host/);
    r = await inProcess(['--config', config(ok.port), 'x@null.test', 'y@nowhere.test', 'z@two.test'], { input });
    assert.equal(r.code, 2, r.stderr);
    const out = lines(r.stdout);
    assert.match(out[0], /^FAIL x@null\.test 5\.1\.10 null\.test: the domain accepts no mail \(null MX, RFC 7505\)$/);
    assert.match(out[1], /^FAIL y@nowhere\.test 5\.1\.2 nowhere\.test: no such domain/);
    assert.equal(out[2], 'OK z@two.test');
    // RFC 5321 5.1: no usable mail host is an error, as Postfix bounces it; not days of retries.
    r = await inProcess(['--config', config(ok.port), 'x@gone.test', 'y@bare.test'], { input });
    assert.equal(r.code, 1, r.stderr);
    assert.deepEqual(lines(r.stdout), [
      "FAIL x@gone.test 5.4.4 the domain's mail hosts have no address: mx.gone.test: no address (A/AAAA)",
      "FAIL y@bare.test 5.4.4 the domain's mail hosts have no address: bare.test: no address (A/AAAA)",
    ]);
    const silent = join(dir, 'silent.toml');
    writeFileSync(silent, `dns_servers = ["127.0.0.1:9"]\n[timeouts]\nconnect = "2s"\n`);
    r = await runMain('smtp-send', ['--config', silent, 'x@two.test'], { input });
    assert.equal(r.code, 75, r.stderr);
    assert.match(r.stdout.toString(), /^TEMPFAIL x@two\.test 4\.4\.3 two\.test: MX lookup failed/);
  },
);

test(
  'smtp-send: a domain configured tls = "verify" is not sent to a host without STARTTLS, however its key is written',
  { skip: smtpSinkMissing },
  async () => {
    const plain = await sink([]);
    // The recipient's domain is matched in lowercase ASCII: a key in capitals must not lose its policy.
    for (const key of ['sink.test', 'Sink.TEST']) {
      const cfg = config(plain.port, `[domains."${key}"]\ntls = "verify"`);
      const r = await runMain('smtp-send', ['--config', cfg, 'x@sink.test'], { input: await message(FIELDS) });
      assert.equal(r.code, 75, `${key}: ${r.stdout}${r.stderr}`);
      assert.match(r.stdout.toString(), /^TEMPFAIL x@sink\.test 4\.4\.1 no host took the message: mx\.sink\.test\[127\.0\.0\.1\]:\d+: STARTTLS: 500 5\.5\.1/m);
    }
  },
);

test('smtp-send: bad input is one clear line and the right exit code, nothing sent', async () => {
  const cfg = config(1);
  let r = await inProcess(['--config', cfg], { input: await message(FIELDS) });
  assert.equal(r.code, 64);
  assert.match(r.stderr, /give at least one RECIPIENT/);
  r = await inProcess(['--config', cfg, 'not-an-address'], { input: await message(FIELDS) });
  assert.equal(r.code, 64);
  assert.match(r.stderr, /recipient: not-an-address: not an address/);
  r = await inProcess(['--config', cfg, 'x@sink.test'], { input: 'not a tar archive at all' });
  assert.equal(r.code, 65);
  assert.match(r.stderr, /smtp-send: message: /);
  r = await inProcess(['--config', cfg, 'x@sink.test'], { input: await message(FIELDS.filter(([k]) => k !== 'from')) });
  assert.equal(r.code, 65);
  assert.match(r.stderr, /no from: give --from/);
  const bad = join(dir, 'bad.toml');
  writeFileSync(bad, `mx_port = 25\n[[dkim]]\ndomain = "a.test"\nselector = "s"\nkey = "missing.key"\n`);
  r = await inProcess(['--config', bad, 'x@sink.test'], { input: await message(FIELDS) });
  assert.equal(r.code, 78);
  assert.match(r.stderr, /bad\.toml: dkim\[0\]\.key: .*missing\.key: no such file/);
  // --check-config runs the same checks: a key that cannot be read is not "configuration OK".
  r = await inProcess(['--config', bad, '--check-config']);
  assert.equal(r.code, 78);
  assert.match(r.stderr, /dkim\[0\]\.key: .*missing\.key: no such file/);
  writeFileSync(bad, `dns_servers = ["localhost"]\n`);
  r = await inProcess(['--config', bad, 'x@sink.test'], { input: await message(FIELDS) });
  assert.equal(r.code, 78);
  assert.match(r.stderr, /dns_servers\[0\]: not an IP address/);
  // Two keys for one domain: which policy holds would be a guess.
  writeFileSync(bad, `[domains."b.test"]\ntls = "verify"\n[domains."B.Test"]\ntls = "may"\n`);
  r = await inProcess(['--config', bad, '--check-config']);
  assert.equal(r.code, 78);
  assert.match(r.stderr, /bad\.toml: domains\."B\.Test": names the same domain as domains\."b\.test" \(b\.test\)/);
  // Found by --check-config, not by the first send that needs them (which failed TEMPFAIL, retried for days).
  const notPem = join(dir, 'not-a-ca.pem');
  writeFileSync(notPem, 'just some text\n');
  for (const [text, problem] of [
    [`tls_ca = ["${notPem}"]\n`, /tls_ca\[0\]: .*not-a-ca\.pem: not a PEM certificate/],
    [`spool_dir = "${join(dir, 'no-such-dir')}"\n`, /spool_dir: .*no-such-dir: no such directory/],
    [`spool_dir = "${notPem}"\n`, /spool_dir: .*not-a-ca\.pem: not a directory/],
    [`[smarthost]\nhost = "relay.b.test:0"\n`, /smarthost\.host: port 0 is not 1-65535/],
    [`[smarthost]\nhost = "-bad-.test"\n`, /smarthost\.host: -bad-\.test: not a host name/],
    [`[smarthost]\nhost = "[1.2.3]:25"\n`, /smarthost\.host: 1\.2\.3: not an IP address/],
  ] as const) {
    writeFileSync(bad, text);
    r = await inProcess(['--config', bad, '--check-config']);
    assert.equal(r.code, 78, text);
    assert.match(r.stderr, problem);
  }
  writeFileSync(bad, `[smarthost]\nhost = "localhost:2525"\n`);
  r = await inProcess(['--config', bad, '--check-config']);
  assert.equal(r.code, 0, `localhost is a smarthost name: ${r.stderr}`);
});

test('smtp-send: an option given twice and a directory given as --file are usage (64) and no-input (66) errors, not trouble to retry', async () => {
  const cfg = config(1);
  let r = await runBin('smtp-send', ['--config', cfg, '-f', 'a@a.test', '-f', 'b@a.test', 'x@sink.test'], { input: await message(FIELDS) });
  assert.equal(r.code, 64, r.stderr);
  assert.match(r.stderr, /^smtp-send: --from given more than once$/m);
  r = await runBin('smtp-send', ['--config', cfg, '--file', dir, 'x@sink.test']);
  assert.equal(r.code, 66, r.stderr);
  assert.equal(r.stderr, `smtp-send: ${dir}: is a directory\n`);
});

test('smtp-send: a message larger than the SIZE the server announces fails for good (5.3.4), as a 552 from the server would', async () => {
  const { SMTPServer } = await import('smtp-server');
  let mails = 0;
  const server = new SMTPServer({ size: 100, disabledCommands: ['STARTTLS', 'AUTH'], logger: false, onMailFrom: (_a, _s, cb) => (mails++, cb()) });
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', () => res()));
  try {
    const port = (server.server.address() as { port: number }).port;
    const r = await runMain('smtp-send', ['--config', config(port), 'bob@mx.sink.test'], { input: await message(FIELDS) });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stdout.toString(), /^FAIL bob@mx\.sink\.test 5\.3\.4 .*larger than allowed 100/m);
    assert.equal(mails, 0, 'nothing sent');
  } finally {
    await new Promise<void>((res) => server.close(() => res()));
  }
});

test('smtp-send: a smarthost with AUTH over verified STARTTLS (smtp-server as the peer); a wrong password is TEMPFAIL, nothing sent', async () => {
  const { SMTPServer } = await import('smtp-server');
  const { readFileSync } = await import('node:fs');
  const got: { user?: string; data: string; secure: boolean }[] = [];
  const server = new SMTPServer({
    key: readFileSync(mxCert.key),
    cert: readFileSync(mxCert.cert),
    authMethods: ['PLAIN', 'LOGIN'],
    logger: false,
    onAuth(auth, _session, cb) {
      if (auth.username === 'alice' && auth.password === 's3cret pass') cb(null, { user: 'alice' });
      else cb(Object.assign(new Error('5.7.8 bad credentials'), { responseCode: 535 }));
    },
    onData(stream, session, cb) {
      let data = '';
      stream.on('data', (c: Buffer) => (data += c));
      stream.on('end', () => {
        got.push({ user: session.user as string | undefined, data, secure: session.secure });
        cb();
      });
    },
  });
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', () => res()));
  const port = (server.server.address() as { port: number }).port;
  try {
    const pass = join(dir, 'smarthost.pass');
    writeFileSync(pass, 's3cret pass\n', { mode: 0o600 });
    const smarthost = (file: string) =>
      config(1, `tls_ca = ["${pki.caFile}"]\n[smarthost]\nhost = "relay.b.test:${port}"\ntls = "starttls"\nuser = "alice"\npassword_file = "${file}"`);
    const r = await runMain('smtp-send', ['--config', smarthost(pass), 'bob@example.org'], { input: await message(FIELDS) });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(lines(r.stdout), ['OK bob@example.org']);
    assert.equal(got.length, 1);
    assert.equal(got[0].user, 'alice');
    assert.equal(got[0].secure, true);
    assert.match(got[0].data, /^Subject: Quarterly report\r$/m);
    const wrong = join(dir, 'wrong.pass');
    writeFileSync(wrong, 'guess\n');
    const r2 = await runMain('smtp-send', ['--config', smarthost(wrong), 'bob@example.org'], { input: await message(FIELDS) });
    assert.equal(r2.code, 75, r2.stderr);
    assert.match(r2.stdout.toString(), /^TEMPFAIL bob@example\.org 4\.4\.1 no host took the message: relay\.b\.test\[127\.0\.0\.1\]:\d+: AUTH PLAIN: 535/m);
    assert.equal(got.length, 1);
  } finally {
    await new Promise<void>((res) => server.close(() => res()));
  }
});

test(
  'smtp-send in-process stops when io.signal aborts (a stage timeout): TEMPFAIL at once, not after the server answers',
  { skip: smtpSinkMissing },
  async () => {
    const slow = await sink(['-w', '60']); // answers DATA after a minute
    const main = await loadProgram('smtp-send');
    const stdout = new PassThrough();
    let text = '';
    stdout.on('data', (c: Buffer) => (text += c));
    const started = Date.now();
    const code = await main(['--config', config(slow.port), 'x@sink.test'], {
      stdin: Readable.from([await message(FIELDS)]),
      stdout,
      stderr: new PassThrough().resume(),
      env: testEnv(),
      cwd: dir,
      signal: AbortSignal.timeout(1000),
    });
    assert.equal(code, 75);
    assert.match(text, /^TEMPFAIL x@sink\.test 4\.4\.1 no host took the message: stopped by the caller/);
    assert.ok(Date.now() - started < 15_000, `took ${Date.now() - started} ms`);
  },
);

test('smtp-send: a server whose STARTTLS handshake fails gets the message in plaintext (opportunistic TLS), never held for it', async () => {
  const { SMTPServer } = await import('smtp-server');
  const { readFileSync } = await import('node:fs');
  const got: boolean[] = [];
  // It offers STARTTLS but speaks only TLS 1.1, which smtp-send (TLS 1.2 at least) will not.
  const server = new SMTPServer({
    key: readFileSync(mxCert.key),
    cert: readFileSync(mxCert.cert),
    maxVersion: 'TLSv1.1',
    minVersion: 'TLSv1',
    authOptional: true,
    logger: false,
    onData(stream, session, cb) {
      stream.on('end', () => {
        got.push(session.secure);
        cb();
      });
      stream.resume();
    },
  });
  const handshakeErrors: Error[] = [];
  server.on('error', (e) => handshakeErrors.push(e)); // the failed handshake, as the server sees it
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', () => res()));
  const port = (server.server.address() as { port: number }).port;
  try {
    const r = await runMain('smtp-send', ['--config', config(port), 'x@sink.test'], { input: await message(FIELDS) });
    // OpenSSL says it as "unsupported protocol" (Node 20) or, refusing TLS 1.1 outright, "no protocols available" (Node 24).
    assert.match(String(handshakeErrors[0]), /unsupported protocol|no protocols available/);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(lines(r.stdout), ['OK x@sink.test']);
    assert.match(r.stderr, /mx\.sink\.test\[127\.0\.0\.1\]:\d+: .*once more without TLS/);
    assert.deepEqual(got, [false]);
    // A domain that requires verified TLS is not sent in plaintext.
    const strict = config(port, `[domains."sink.test"]\ntls = "verify"`);
    const r2 = await runMain('smtp-send', ['--config', strict, 'x@sink.test'], { input: await message(FIELDS) });
    assert.equal(r2.code, 75, r2.stderr);
    assert.equal(got.length, 1);
  } finally {
    await new Promise<void>((res) => server.close(() => res()));
  }
});
