// post-office and fetch-mail as real processes over real TLS on loopback.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, symlinkSync, watch, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import tls from 'node:tls';
import net from 'node:net';
import { X509Certificate } from 'node:crypto';
import { fingerprint256 } from '../../src/net/tls.js';
import { BIN, type Listening, runBin, startListening, testEnv } from '../helpers.js';
import { boxes, deliver, dir, open, pki, server, until } from '../imrp-fixture.js';
import { EXPIRED } from '../pki.js';
import { scrape, startJsonServer } from '../metrics-scrape.js';

const bobCert = pki.user('bob');
const malloryCert = pki.user('mallory');
const bobExpired = pki.user('bob', { file: 'bob-expired', validity: EXPIRED });
const bobFuture = pki.user('bob', { file: 'bob-future', validity: { notBefore: new Date(Date.now() + 86_400_000), days: 30 } });
const big = Buffer.alloc(20 * 1024 * 1024);
for (let i = 0; i < big.length; i += 4) big.writeUInt32LE((i * 2654435761) >>> 0, i);
writeFileSync(join(dir, 'big.bin'), big);

let po: Listening;
let strict: Listening;
let port = 0;

function fetchConfig(name: string, extra: string): string {
  const f = join(dir, `${name}.toml`);
  writeFileSync(f, `server = "127.0.0.1"\nserver_name = "b.test"\nport = ${port}\nca = ["${pki.caFile}"]\n${extra}`);
  return f;
}

const fetch = (cfg: string, args: string[], env: Record<string, string> = {}) => runBin('fetch-mail', ['--config', cfg, ...args], { env: testEnv(env) });
const local = (d: string) => (existsSync(join(d, 'new')) ? readdirSync(join(d, 'new')).sort() : []);

/** A raw IMRP conversation: send lines, collect what the server says until it closes or `until` matches. */
async function converse(lines: string[], until: RegExp, cert?: { cert: string; key: string }, at = port, from?: string): Promise<string> {
  const s = tls.connect({
    host: '127.0.0.1',
    port: at,
    socket: from ? net.connect({ host: '127.0.0.1', port: at, localAddress: from }) : undefined,
    servername: 'b.test',
    ca: readFileSync(pki.caFile),
    ...(cert ? { cert: readFileSync(cert.cert), key: readFileSync(cert.key) } : {}),
  });
  await once(s, 'secureConnect');
  let got = '';
  s.on('data', (d) => (got += d.toString('latin1')));
  s.write(lines.map((l) => `${l}\n`).join(''));
  await new Promise<void>((res) => {
    const check = () => (until.test(got) ? res() : undefined);
    s.on('data', check);
    s.on('close', () => res());
  });
  s.destroy();
  return got;
}

before(async () => {
  const hash = (await runBin('post-office', ['--hash-password'], { input: 'sesame\n' })).stdout.toString().trim();
  assert.match(hash, /^scrypt\$16384\$8\$1\$/);
  const [bobFp, expiredFp, futureFp] = [bobCert, bobExpired, bobFuture].map((c) => fingerprint256(new X509Certificate(readFileSync(c.cert))));
  const cfg = join(dir, 'post-office.toml');
  writeFileSync(
    cfg,
    `name = "b.test"
[tls]
certificate = "${server.cert}"
key = "${server.key}"
ca = ["${pki.caFile}"]
[users.bob]
mailbox = "${join(boxes, 'bob')}"
password = "${hash}"
certificate_sha256 = ["${bobFp}", "${expiredFp}", "${futureFp}"]
[users.carol]
mailbox = "${join(boxes, 'carol')}"
password = "${hash}"
certificate_name = "carol"
[limits]
max_login_failures = 50
[timeouts]
login_delay = "50ms"
`,
  );
  po = await startListening('post-office', ['--config', cfg, '--listen', '127.0.0.1:0']);
  port = po.port;
  // A second server with tight limits, for the tests of those limits.
  const strictCfg = join(dir, 'post-office-strict.toml');
  writeFileSync(
    strictCfg,
    readFileSync(cfg, 'utf8').replace('max_login_failures = 50', 'max_login_failures = 3').replace('login_delay = "50ms"', 'login_delay = "10ms"\nidle = "1s"'),
  );
  strict = await startListening('post-office', ['--config', strictCfg, '--listen', '127.0.0.1:0']);
});
after(() => Promise.all([po.stop(), strict.stop()]));

describe('post-office and fetch-mail', () => {
  it('fetches every new message by password, deletes them on the server, and fetches nothing the second time', async () => {
    const ids = await deliver('bob', 5, ['-a', 'big.bin']);
    const cfg = fetchConfig('bob-pw', 'user = "bob"\npassword_env = "BOB_PW"\n');
    const out = join(dir, 'bob-local');
    const r = await fetch(cfg, [out, '--verbose'], { BOB_PW: 'sesame' });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /fetched 5 messages .*; 0 left on the server/);
    assert.deepEqual(local(out), ids.sort());
    for (const id of ids) assert.deepEqual(readFileSync(join(out, 'new', id, 'attachments', 'big.bin')), big, 'attachment byte for byte');
    assert.deepEqual(readdirSync(join(boxes, 'bob', 'new')), []);
    const again = await fetch(cfg, [out, '--verbose'], { BOB_PW: 'sesame' });
    assert.equal(again.code, 0);
    assert.match(again.stderr, /fetched 0 messages/);
    await po.waitLog(/login user=bob address=127\.0\.0\.1 method=password result=ok/);
    await po.waitLog(/fetch user=bob messages=5 bytes=\d+/);
  });

  it('keeps its memory across password logins (a check does not leave its 16 MiB behind)', async () => {
    // scrypt at N=16384, r=8 takes 16 MiB per check. With glibc's default
    // malloc, each thread that ran one kept the block: the process grew by
    // 16 MB per login until every thread of the pool held one.
    const own = await startListening('post-office', ['--config', join(dir, 'post-office.toml'), '--listen', '127.0.0.1:0']);
    try {
      const rssMb = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${own.proc.pid}/status`, 'utf8'))![1]) / 1024;
      const login = async () => assert.match(await converse(['LOGIN bob sesame', 'QUIT'], /^BYE/m, undefined, own.port), /^OK logged in as bob$/m);
      await login();
      const first = rssMb();
      for (let i = 0; i < 8; i++) await login();
      const grown = rssMb() - first;
      assert.ok(grown < 24, `post-office grew by ${grown.toFixed(1)} MB over 8 more logins`);
    } finally {
      await own.stop();
    }
  });

  it('logs in by client certificate; --keep marks seen and the next run fetches nothing', async () => {
    const ids = await deliver('bob', 3);
    const cfg = fetchConfig('bob-cert', `user = "bob"\ncertificate = "${bobCert.cert}"\nkey = "${bobCert.key}"\n`);
    const out = join(dir, 'bob-keep');
    const r = await fetch(cfg, [out, '--keep', '--verbose']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(local(out), ids.sort());
    assert.deepEqual(readdirSync(join(boxes, 'bob', 'cur')).sort(), ids.sort());
    assert.match(r.stderr, /3 left on the server/);
    const again = await fetch(cfg, [out, '--keep', '--verbose']);
    assert.match(again.stderr, /fetched 0 messages/);
    await po.waitLog(/method=certificate result=ok/);
  });

  it('takes the password from password_file (relative to its config), never from the command line', async () => {
    writeFileSync(join(dir, 'bob.pw'), 'sesame\n');
    const r = await fetch(fetchConfig('bob-pwfile', 'user = "bob"\npassword_file = "bob.pw"\n'), [join(dir, 'bob-pwfile'), '--verbose']);
    assert.equal(r.code, 0, r.stderr);
    writeFileSync(join(dir, 'bob-crlf.pw'), 'sesame\r\n');
    const crlf = await fetch(fetchConfig('bob-crlf', 'user = "bob"\npassword_file = "bob-crlf.pw"\n'), [join(dir, 'bob-crlf')]);
    assert.equal(crlf.code, 0, `a file with CRLF line ends: ${crlf.stderr}`);
    const missing = await fetch(fetchConfig('bob-nopw', 'user = "bob"\npassword_file = "nonexistent.pw"\n'), [join(dir, 'x')]);
    assert.equal(missing.code, 78);
    assert.match(missing.stderr, /password_file: \/.*\/nonexistent\.pw: no such file/);
    const onArgv = await fetch(fetchConfig('bob-argv', 'user = "bob"\n'), ['--password', 'sesame', join(dir, 'x')]);
    assert.equal(onArgv.code, 64);
    assert.match(onArgv.stderr, /Unknown argument: password/);
  });

  it('answers an unknown user and a wrong password alike, and exits 77', async () => {
    const wrong = await fetch(fetchConfig('wrong', 'user = "bob"\n'), [join(dir, 'x')], { IMA_PASSWORD: 'nope' });
    const unknown = await fetch(fetchConfig('unknown', 'user = "nobody"\n'), [join(dir, 'x')], { IMA_PASSWORD: 'nope' });
    assert.equal(wrong.code, 77);
    assert.equal(unknown.code, 77);
    assert.equal(wrong.stderr.replace('bob', 'U'), unknown.stderr.replace('nobody', 'U'));
    assert.match(wrong.stderr, /login as bob refused: login failed/);
  });

  it("refuses a certificate that is not the user's (mallory's cert for bob; a cert name login without a matching CN)", async () => {
    const r = await fetch(fetchConfig('mallory', `user = "bob"\ncertificate = "${malloryCert.cert}"\nkey = "${malloryCert.key}"\n`), [join(dir, 'm')]);
    assert.equal(r.code, 77);
    const c = await fetch(fetchConfig('mallory-carol', `user = "carol"\ncertificate = "${malloryCert.cert}"\nkey = "${malloryCert.key}"\n`), [join(dir, 'm')]);
    assert.equal(c.code, 77);
  });

  it('refuses a pinned certificate (certificate_sha256) outside its validity dates', async () => {
    for (const cert of [bobExpired, bobFuture]) {
      const got = await converse(['LOGIN bob', 'QUIT'], /^BYE/m, cert);
      assert.match(got, /^NO login failed$/m, cert.cert);
    }
    assert.match(await converse(['LOGIN bob', 'QUIT'], /^BYE/m, bobCert), /^OK logged in as bob$/m);
  });

  it("never reaches another user's mailbox, nor a path given as an id", async () => {
    const [carolId] = await deliver('carol', 1);
    const got = await converse(
      ['LOGIN bob sesame', `FETCH ${carolId}`, `DELETE ${carolId}`, 'FETCH ../carol/new', 'FETCH /etc/passwd', `FETCH ${carolId}/headers`, 'LIST all', 'QUIT'],
      /^BYE/m,
    );
    assert.match(got, /^OK logged in as bob$/m);
    assert.match(got, /^NO no such message$/m);
    assert.match(got, /^OK 0$/m, "DELETE of another user's id deletes nothing");
    assert.equal((got.match(/^ERROR .*is not a message id$/gm) ?? []).length, 3);
    assert.doesNotMatch(got, /MESSAGE /);
    assert.deepEqual(readdirSync(join(boxes, 'carol', 'new')), [carolId]);
    const before = await converse(['LIST all'], /^NO/m);
    assert.match(before, /^NO log in first$/m);
  });

  it("never serves another user's file through a link planted in one's own mailbox (attachments/ -> carol's)", async () => {
    writeFileSync(join(dir, 'secret.txt'), "carol's secret\n");
    writeFileSync(join(dir, 'mine.txt'), 'mine\n');
    const [carolId] = await deliver('carol', 1, ['-a', 'secret.txt']);
    const [bobId] = await deliver('bob', 1, ['-a', 'mine.txt']);
    const planted = join(boxes, 'bob', 'new', bobId);
    rmSync(join(planted, 'attachments'), { recursive: true });
    symlinkSync(join(boxes, 'carol', 'new', carolId, 'attachments'), join(planted, 'attachments'));
    try {
      const got = await converse(['LOGIN bob sesame', `FETCH ${bobId}`, 'LIST new', 'FETCH NEW', 'QUIT'], /^BYE/m);
      assert.match(got, /^NO message cannot be read$/m);
      assert.doesNotMatch(got, /carol's secret/);
      assert.doesNotMatch(got, new RegExp(`^(MSG|MESSAGE) ${bobId}`, 'm'), 'neither listed nor sent');
      await po.waitLog(new RegExp(`${bobId}: cannot be sent: .*attachments: a symbolic link or not a plain file or directory \\(refused\\)`));
    } finally {
      rmSync(planted, { recursive: true });
    }
  });

  it("never moves a message into another user's mailbox through a folder that is a link (cur/ or tmp/ -> carol's)", async () => {
    await deliver('carol', 1);
    for (const [folder, verb] of [
      ['cur', 'SEEN'],
      ['tmp', 'DELETE'],
    ] as const) {
      const [bobId] = await deliver('bob', 1);
      const mine = join(boxes, 'bob', folder);
      const carols = () => readdirSync(join(boxes, 'carol', folder));
      const before = carols();
      renameSync(mine, `${mine}.real`);
      symlinkSync(join(boxes, 'carol', folder), mine);
      try {
        const got = await converse(['LOGIN bob sesame', `${verb} ${bobId}`, 'QUIT'], /^BYE/m);
        assert.match(got, /^NO mailbox cannot be changed$/m, verb);
        assert.deepEqual(carols(), before, `nothing put in carol's ${folder}/`);
        assert.ok(readdirSync(join(boxes, 'bob', 'new')).includes(bobId), `${verb}: bob's message stays where it was`);
        await po.waitLog(new RegExp(`user=bob: ${verb === 'SEEN' ? 'seen' : 'deleted'} refused: ${folder}: a symbolic link or not a plain`));
      } finally {
        rmSync(mine);
        renameSync(`${mine}.real`, mine);
      }
      assert.match(await converse(['LOGIN bob sesame', `DELETE ${bobId}`, 'QUIT'], /^BYE/m), /^OK 1$/m, 'the folder back, the message can go');
    }
  });

  it('draws a progress bar with --progress: one step per message, to the total from LIST', async () => {
    await deliver('bob', 3);
    const r = await fetch(fetchConfig('bob-progress', 'user = "bob"\n'), [join(dir, 'bob-progress'), '--progress'], { IMA_PASSWORD: 'sesame' });
    assert.equal(r.code, 0, r.stderr);
    const steps = r.stderr.split('\r').filter(Boolean);
    assert.deepEqual(
      steps.map((l) => /^\[[#.]{30}\] (\d+\/\d+) messages, \d+\.\d MB\n?$/.exec(l)?.[1]),
      ['1/3', '2/3', '3/3'],
    );
    assert.match(steps[2], /^\[#{30}\] 3\/3 messages, 0\.0 MB\n$/);
    const quiet = await fetch(fetchConfig('bob-progress', 'user = "bob"\n'), [join(dir, 'bob-progress')], { IMA_PASSWORD: 'sesame' });
    assert.equal(quiet.stderr, '', 'no bar when stderr is not a terminal and --progress is not given');
  });

  it('a fetch killed in the middle, run again, ends with every message exactly once', async () => {
    const ids = await deliver('bob', 12, ['-a', 'big.bin']);
    const cfg = fetchConfig('bob-kill', 'user = "bob"\n');
    const out = join(dir, 'bob-killed');
    for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(out, f), { recursive: true });
    // Killed on an event: the first message renamed into new/ (the rest, 11 x 20 MB, still to come).
    const firstStored = new Promise<void>((res) => {
      const w = watch(join(out, 'new'), () => {
        if (local(out).length === 0) return;
        w.close();
        res();
      });
    });
    const child = spawn(join(BIN, 'fetch-mail'), ['--config', cfg, out], { env: testEnv({ IMA_PASSWORD: 'sesame' }), stdio: ['ignore', 'ignore', 'ignore'] });
    const exited = once(child, 'exit');
    await Promise.race([firstStored, exited]);
    child.kill('SIGKILL');
    const [code, signal] = await exited;
    assert.equal(signal, 'SIGKILL', `fetch-mail was killed, not finished (exit ${code})`);
    const atKill = local(out).length;
    assert.ok(atKill >= 1 && atKill < ids.length, `killed with ${atKill} of ${ids.length} stored`);
    assert.ok(readdirSync(join(boxes, 'bob', 'new')).length > 0, 'messages left on the server');
    const r = await fetch(cfg, [out, '--verbose'], { IMA_PASSWORD: 'sesame' });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(
      local(out)
        .filter((id) => ids.includes(id))
        .sort(),
      ids.sort(),
    );
    for (const id of ids) assert.deepEqual(readFileSync(join(out, 'new', id, 'attachments', 'big.bin')), big);
    assert.deepEqual(readdirSync(join(boxes, 'bob', 'new')), []);
    for (const id of local(out)) assert.ok(existsSync(join(out, 'new', id, 'headers')), `${id} in new/ is whole`);
  });

  it("acts on a line of several ids at once: SEEN and DELETE count only the user's own messages, each once", async () => {
    const [carolId] = await deliver('carol', 1);
    const mine = await deliver('bob', 3);
    const got = await converse(['LOGIN bob sesame', `SEEN ${mine[0]} ${mine[0]} ${carolId}`, `DELETE ${mine.join(' ')} ${carolId}`, 'QUIT'], /^BYE/m);
    assert.deepEqual(got.match(/^OK \d+$/gm), ['OK 1', 'OK 3']);
    const bobs = [...readdirSync(join(boxes, 'bob', 'new')), ...readdirSync(join(boxes, 'bob', 'cur'))];
    for (const id of mine) assert.ok(!bobs.includes(id), `${id} deleted`);
    assert.ok(readdirSync(join(boxes, 'carol', 'new')).includes(carolId), "carol's message untouched");
  });
});

describe('post-office limits', () => {
  it('counts failed logins per address: after the limit the connection is dropped, and a new one is refused at once', async () => {
    const first = await converse(
      ['LOGIN mallory1 wrong1', 'LOGIN mallory2 wrong2', 'LOGIN mallory3 wrong3', 'LOGIN bob sesame'],
      /^BYE/m,
      undefined,
      strict.port,
    );
    assert.equal((first.match(/^NO login failed$/gm) ?? []).length, 3);
    assert.match(first, /^BYE too many failed logins$/m);
    assert.doesNotMatch(first, /logged in/, 'the fourth try was never heard');
    const again = await converse(['LOGIN bob sesame', 'LOGIN bob sesame'], /^BYE/m, undefined, strict.port);
    assert.match(again, /^NO login failed\nBYE too many failed logins$/m);
    assert.doesNotMatch(again, /logged in/);
  });

  it("never lets a login to the attacker's own account reset the failures of the address", async () => {
    const from = '127.0.0.2';
    const first = await converse(['LOGIN nobody1 x', 'LOGIN nobody2 x', 'LOGIN carol sesame', 'QUIT'], /^BYE/m, undefined, strict.port, from);
    assert.match(first, /^OK logged in as carol$/m);
    const next = await converse(['LOGIN nobody3 x', 'QUIT'], /^BYE/m, undefined, strict.port, from);
    assert.match(next, /^NO login failed\nBYE too many failed logins$/m, 'the third failure from this address ends it');
  });

  it('counts failures per user too: guesses at one user from many addresses lock that user, and only password logins', async () => {
    for (const from of ['127.0.0.3', '127.0.0.4', '127.0.0.5']) {
      const got = await converse(['LOGIN carol wrong', 'QUIT'], /^BYE/m, undefined, strict.port, from);
      assert.match(got, /^NO login failed$/m);
    }
    const right = await converse(['LOGIN carol sesame', 'QUIT'], /^BYE/m, undefined, strict.port, '127.0.0.6');
    assert.match(right, /^NO login failed\nBYE too many failed logins$/m, 'even the right password is not tried');
    await strict.waitLog(/login user=carol address=127\.0\.0\.6 method=password result=refused/);
    const other = await converse(['LOGIN bob sesame', 'QUIT'], /^BYE/m, undefined, strict.port, '127.0.0.7');
    assert.match(other, /^OK logged in as bob$/m, 'another user from a fresh address is not affected');
  });

  it('stops parallel guesses at max_login_failures: 8 connections at once, only 3 passwords tried', async () => {
    // A server of its own, so the counts of the other tests do not matter.
    const racing = await startListening('post-office', ['--config', join(dir, 'post-office-strict.toml'), '--listen', '127.0.0.1:0']);
    try {
      const sockets = await Promise.all(Array.from({ length: 8 }, () => open(racing.port)));
      const answers = sockets.map((s) => until(s, /^NO /m));
      sockets.forEach((s, i) => s.write(`LOGIN carol wrong${i}\n`));
      for (const got of await Promise.all(answers)) assert.match(got, /^NO login failed$/m);
      sockets.forEach((s) => s.destroy());
      await racing.waitLog(/(login user=carol .*\n[^]*){8}/);
      const results = [...racing.log().matchAll(/login user=carol .*result=(\w+)/g)].map((m) => m[1]);
      assert.deepEqual(results.filter((r) => r === 'failed').length, 3, racing.log());
      assert.deepEqual(results.filter((r) => r === 'refused').length, 5, 'the others refused without their password tried');
    } finally {
      await racing.stop();
    }
  });

  it('refuses a zero duration at config time, except login_delay where 0 means no delay', async () => {
    const base = readFileSync(join(dir, 'post-office.toml'), 'utf8');
    const zeroIdle = join(dir, 'po-zero-idle.toml');
    writeFileSync(zeroIdle, base.replace('login_delay = "50ms"', 'idle = 0'));
    const bad = await runBin('post-office', ['--config', zeroIdle, '--check-config']);
    assert.equal(bad.code, 78);
    assert.match(bad.stderr, /po-zero-idle\.toml: timeouts\.idle: must be more than 0/);
    const zeroDelay = join(dir, 'po-zero-delay.toml');
    writeFileSync(zeroDelay, base.replace('login_delay = "50ms"', 'login_delay = "0s"'));
    const ok = await runBin('post-office', ['--config', zeroDelay, '--check-config']);
    assert.equal(ok.code, 0, ok.stderr);
  });

  it('drops a client that says nothing within the idle timeout', async () => {
    const silent = await converse([], /^BYE/m, undefined, strict.port);
    assert.match(silent, /^IMRP 1 b\.test\nBYE no command for 1 s$/m);
  });
});

describe('post-office for its operator', () => {
  it('--log-format json and metrics: logins, login failures, messages and bytes fetched, as scraped after real sessions', async () => {
    const file = join(dir, 'po-metrics.toml');
    writeFileSync(file, `metrics = "127.0.0.1:0"\n${readFileSync(join(dir, 'post-office.toml'), 'utf8')}`);
    const s = await startJsonServer('post-office', ['--config', file, '--listen', '127.0.0.1:0']);
    try {
      await deliver('bob', 3);
      const waiting = readdirSync(join(boxes, 'bob', 'new')).length;
      const failed = await converse(['LOGIN bob wrong', 'LOGIN nobody wrong', 'QUIT'], /^BYE/m, undefined, s.port, '127.0.0.9');
      assert.equal((failed.match(/^NO login failed$/gm) ?? []).length, 2);
      const cfg = join(dir, 'bob-metrics.toml');
      writeFileSync(cfg, `server = "127.0.0.1"\nserver_name = "b.test"\nport = ${s.port}\nca = ["${pki.caFile}"]\nuser = "bob"\n`);
      const r = await fetch(cfg, [join(dir, 'bob-metrics'), '--verbose'], { IMA_PASSWORD: 'sesame' });
      assert.equal(r.code, 0, r.stderr);
      const bytes = Number(/fetched \d+ messages? \((\d+) bytes\)/.exec(r.stderr)?.[1]);
      const m = await scrape(s.metricsPort);
      assert.equal(m.get('ima_logins_total{method="password",result="failed"}'), 2);
      assert.equal(m.get('ima_login_failures_total'), 2);
      assert.equal(m.get('ima_logins_total{method="password",result="ok"}'), 1);
      assert.equal(m.get('ima_messages_total{result="sent"}'), waiting);
      assert.equal(m.get('ima_message_bytes_total{result="sent"}'), bytes);
      assert.equal(m.get('ima_connections_total{result="accepted"}'), 2);
      const login = s.records().find((x) => x.result === 'failed');
      assert.equal(login?.program, 'post-office');
      assert.equal(login?.user, 'bob');
      assert.equal(login?.address, '127.0.0.9');
      assert.equal(login?.method, 'password');
    } finally {
      await s.stop();
    }
  });
});
