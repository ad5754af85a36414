import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, test } from 'node:test';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readMessage } from '../../src/message/index.js';
import { buildNotice } from '../../src/queue/notice.js';
import { BIN, runBin } from '../helpers.js';
import { HANDLER, type Server, certs, config, dir, message, outDir, pki, startServer } from '../imdp-fixture.js';
import { listQueue, queueSetup, recipient } from '../queue-fixture.js';
import { smtpSinkMissing, startSink } from '../smtp-sink.js';

const servers: Server[] = [];
after(async () => Promise.all(servers.map((s) => s.stop())));

async function server(domain: 'b.test' | 'c.test', out: string) {
  const s = await startServer(config({ domain, cert: certs[domain === 'b.test' ? 'b' : 'c'], handler: ['node', HANDLER, 'ok', out] }));
  servers.push(s);
  return s;
}

/** A port nothing listens on: connections to it are refused. */
async function closedPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((res) => srv.listen(0, '127.0.0.1', res));
  const { port } = srv.address() as { port: number };
  await new Promise<void>((res) => srv.close(() => res()));
  return port;
}

let n = 0;
function sendMailConfig(table: Record<string, string>): string {
  const file = join(dir, `queue-send-mail-${n++}.toml`);
  const servers = Object.entries(table).map(([d, t]) => `"${d}" = "${t}"`);
  writeFileSync(
    file,
    `domain = "a.test"\ndns_srv = false\n[tls]\ncertificate = "${certs.a.cert}"\nkey = "${certs.a.key}"\nca = ["${pki.caFile}"]\n[servers]\n${servers.join('\n')}\n`,
  );
  return file;
}

async function queue(env: Record<string, string | undefined>, fields: [string, string][], args: string[] = []): Promise<string> {
  const r = await runBin('queue-mail', args, { env, input: await message(fields) });
  assert.equal(r.code, 0, r.stderr);
  const id = r.stdout.toString().trim();
  assert.match(id, /^\d{8}T\d{6}-[0-9a-f]{10}$/);
  return id;
}

/** A message from alice to `to`, queued; its queue id. */
const queueTo = (env: Record<string, string | undefined>, to: string) =>
  queue(env, [
    ['from', 'alice@a.test'],
    ['to', to],
  ]);
const imaFiles = (d: string) => readdirSync(d).filter((f) => f.endsWith('.ima'));
const later = (minutes: number) => new Date(Date.now() + minutes * 60_000).toISOString();

async function headersOf(ima: Buffer) {
  const first = await readMessage(Readable.from([ima])).next();
  if (first.done || first.value.kind !== 'headers') throw new Error('no headers');
  return first.value.headers;
}

test('run-queue: a domain whose server is down is deferred as a whole, retried later and delivered once; the other domain is never sent twice', async () => {
  const outB = outDir();
  const outC = outDir();
  const b = await server('b.test', outB);
  const c = await server('c.test', outC);
  const down = sendMailConfig({ 'b.test': `127.0.0.1:${b.port}`, 'c.test': `127.0.0.1:${await closedPort()}` });
  const q = queueSetup({ sendMailConfig: down, runQueue: 'max_per_domain = 1\n', direct: true });
  const m1 = await queueTo(q.env, 'bob@b.test, carol@c.test');
  const m2 = await queueTo(q.env, 'dave@c.test');

  const first = await runBin('run-queue', ['--once'], { env: q.env });
  assert.equal(first.code, 0, first.stderr);
  const list = await listQueue(q.env);
  assert.deepEqual(list.map((m) => m.queue_id).sort(), [m1, m2].sort());
  assert.equal(recipient(list, 'bob@b.test')?.state, 'delivered');
  const carol = recipient(list, 'carol@c.test')!;
  const dave = recipient(list, 'dave@c.test')!;
  // One of the two c.test messages met the refused connection; the other was not even tried.
  const [tried, suspended] = carol.attempts === 1 ? [carol, dave] : [dave, carol];
  assert.equal(tried.state, 'deferred');
  assert.match(tried.last_reply, /ECONNREFUSED/);
  assert.equal(suspended.state, 'deferred');
  assert.equal(suspended.attempts, 0);
  assert.match(suspended.last_reply, /suspended until/);
  // First retry about 5 minutes later (Postfix's default schedule).
  const wait = Date.parse(tried.next_attempt) - Date.now();
  assert.ok(wait > 4 * 60_000 && wait <= 5 * 60_000, `next attempt in ${wait} ms`);
  assert.equal(imaFiles(outB).length, 1);
  assert.equal(imaFiles(outC).length, 0);

  // Not due yet: nothing happens.
  const early = await runBin('run-queue', ['--once', '--now', later(1)], { env: q.env });
  assert.equal(early.code, 0, early.stderr);
  assert.equal(recipient(await listQueue(q.env), 'carol@c.test')?.attempts, carol.attempts);

  // c.test is back; six minutes later both are due and delivered; bob is not sent again.
  const up = sendMailConfig({ 'b.test': `127.0.0.1:${b.port}`, 'c.test': `127.0.0.1:${c.port}` });
  writeFileSync(join(q.dir, 'run-queue.toml'), readFileSync(join(q.dir, 'run-queue.toml'), 'utf8').replace(down, up));
  const second = await runBin('run-queue', ['--once', '--now', later(6)], { env: q.env });
  assert.equal(second.code, 0, second.stderr);
  assert.deepEqual(await listQueue(q.env), []);
  assert.equal(imaFiles(outB).length, 1);
  assert.equal(imaFiles(outC).length, 2);
  assert.deepEqual(readdirSync(join(q.dir, 'queue', 'messages')), []);
  const third = await runBin('run-queue', ['--once', '--now', later(60)], { env: q.env });
  assert.equal(third.code, 0, third.stderr);
  assert.equal(imaFiles(outC).length, 2);
});

test('list-queue --retry ID tries the message at once even while its domain is suspended after a refused connection', async () => {
  const down = sendMailConfig({ 'c.test': `127.0.0.1:${await closedPort()}` });
  const q = queueSetup({ sendMailConfig: down, runQueue: 'max_per_domain = 1\n', direct: true });
  const ids = [await queueTo(q.env, 'carol@c.test'), await queueTo(q.env, 'dave@c.test')];
  const { proc, seen } = daemon(q.env);
  try {
    await seen(/c\.test suspended until \S+: (carol|dave)@c\.test deferred untried/);
    const list = await listQueue(q.env);
    const untried = list.find((m) => m.recipients[0]!.attempts === 0)!;
    assert.match(untried.recipients[0]!.last_reply, /suspended until/);
    const r = await runBin('list-queue', ['--retry', untried.queue_id], { env: q.env });
    assert.equal(r.code, 0, r.stderr);
    const who = untried.recipients[0]!.address.replace('.', '\\.');
    await seen(new RegExp(`${untried.queue_id}: attempting ${who}`));
    await seen(new RegExp(`${untried.queue_id}: ${who}: deferred`));
    const after = (await listQueue(q.env)).find((m) => m.queue_id === untried.queue_id)!;
    assert.equal(after.recipients[0]!.attempts, 1, after.recipients[0]!.last_reply);
    assert.match(after.recipients[0]!.last_reply, /ECONNREFUSED/);
    assert.ok(ids.includes(untried.queue_id));
  } finally {
    proc.kill('SIGTERM');
    if (proc.exitCode === null) await once(proc, 'exit');
  }
});

test('run-queue: mixed domains in one message; a permanent failure makes exactly one notice, and a notice that fails makes none', async () => {
  const outB = outDir();
  const b = await server('b.test', outB);
  const q = queueSetup({ sendMailConfig: sendMailConfig({ 'b.test': `127.0.0.1:${b.port}` }) });
  q.answer({ 'x.test': 'FAIL', 'y.test': 'TEMPFAIL', 'a.test': 'FAIL' });
  const id = await queue(q.env, [
    ['from', 'Alice <alice@a.test>'],
    ['to', 'bob@b.test, zed@x.test'],
    ['cc', 'yan@y.test'],
    ['subject', 'plans'],
  ]);
  const r = await runBin('run-queue', ['--once'], { env: q.env });
  assert.equal(r.code, 0, r.stderr);
  const list = await listQueue(q.env);
  assert.equal(recipient(list, 'bob@b.test')?.state, 'delivered');
  assert.equal(recipient(list, 'zed@x.test')?.state, 'failed');
  assert.match(recipient(list, 'zed@x.test')!.last_reply, /^FAIL 5\.1\.1/);
  assert.equal(recipient(list, 'yan@y.test')?.state, 'deferred');
  assert.equal(imaFiles(outB).length, 1);
  // Each domain had its own run of the stage with only its recipients.
  assert.deepEqual(
    q
      .given()
      .map((g) => g.rcpts.join(' '))
      .sort(),
    ['bob@b.test', 'yan@y.test', 'zed@x.test'],
  );
  const notices = list.filter((m) => m.notice === 'failure');
  assert.equal(notices.length, 1);
  assert.equal(notices[0].sender, '', 'a notice has no sender: nobody is told when it fails');
  assert.deepEqual(
    notices[0].recipients.map((x) => x.address),
    ['alice@a.test'],
  );

  // The next runs: yan still deferred (no second notice for zed); the notice fails for good and makes no notice of its own.
  for (const minutes of [6, 20]) {
    const again = await runBin('run-queue', ['--once', '--now', later(minutes)], { env: q.env });
    assert.equal(again.code, 0, again.stderr);
  }
  const given = q.given();
  const noticeCopies = [];
  for (const g of given) if ((await headersOf(g.ima)).get('notice')) noticeCopies.push(g);
  assert.equal(noticeCopies.length, 1, 'exactly one notice went out');
  const h = await headersOf(noticeCopies[0].ima);
  assert.equal(h.get('to'), 'alice@a.test');
  assert.equal(h.get('notice'), 'failure');
  assert.match(h.get('subject')!, /plans/);
  const tar = noticeCopies[0].ima.toString('latin1');
  assert.match(tar, /zed@x\.test: FAIL 5\.1\.1 no such user here/);
  assert.match(tar, /original-headers\.txt/);
  assert.doesNotMatch(tar, /yan@y\.test: /, 'the notice names only the failed recipient');
  const left = await listQueue(q.env);
  assert.deepEqual(
    left.map((m) => m.queue_id),
    [id],
  );
  assert.equal(recipient(left, 'yan@y.test')?.attempts, 3);
  assert.equal(given.filter((g) => g.rcpts.includes('bob@b.test')).length, 1);
});

test('run-queue: one delay warning after delay_warning; a recipient still deferred after max_lifetime fails, and the sender gets one notice', async () => {
  const q = queueSetup({ sendMailConfig: sendMailConfig({}), runQueue: 'max_lifetime = "2h"\ndelay_warning = "1h"\n' });
  q.answer({ 'y.test': 'TEMPFAIL', 'a.test': 'SILENT' });
  await queueTo(q.env, 'yan@y.test');
  const at = async (minutes: number) => assert.equal((await runBin('run-queue', ['--once', '--now', later(minutes)], { env: q.env })).code, 0);
  await at(0);
  await at(30);
  assert.deepEqual(
    (await listQueue(q.env)).map((m) => m.notice),
    [''],
  );
  await at(70);
  await at(100);
  const warned = await listQueue(q.env);
  // Ids sort by arrival to the second: the two may come in either order.
  assert.deepEqual(warned.map((m) => m.notice).sort(), ['', 'delay'], 'one delay warning, not one per run');
  const delay = warned.find((m) => m.notice === 'delay')!;
  const warning = readFileSync(join(q.dir, 'queue', 'messages', `${delay.queue_id}.ima`)).toString('latin1');
  assert.match(warning, /has not yet been delivered/);
  // The delay warning itself is undeliverable (a.test is SILENT) and expires quietly with the rest.
  await at(200);
  const list = (await listQueue(q.env)).filter((m) => m.notice !== 'delay');
  assert.equal(list.length, 1, JSON.stringify(list));
  assert.equal(list[0].notice, 'failure');
  // The notice waits in the queue for the next run; it says why and when.
  const notice = readFileSync(join(q.dir, 'queue', 'messages', `${list[0].queue_id}.ima`)).toString('latin1');
  assert.match(notice, /yan@y\.test: gave up after 4 attempts in 3 h: TEMPFAIL 4\.2\.1 try later/);
  const r = await runBin('list-queue', [], { env: q.env });
  assert.match(r.stdout.toString(), /from <> \(failure notice\)/);
});

test('run-queue: Bob@b.test and bob@b.test, two recipients to queue-mail, each take their own result line, in either order', async () => {
  const q = queueSetup({ sendMailConfig: sendMailConfig({}) });
  // A stage that knows no one whose name starts with a capital.
  const stage = join(q.dir, 'case-stage.sh');
  writeFileSync(
    stage,
    `#!/bin/sh\ncat >/dev/null\nwhile [ $# -gt 0 ]; do\n  [ "$1" = --recipient ] && case "$2" in [A-Z]*) echo "NORECIPIENT $2";; *) echo "OK $2";; esac\n  shift\ndone\nexit 2\n`,
    { mode: 0o755 },
  );
  writeFileSync(join(q.dir, 'run-queue.toml'), `queue_dir = "queue"\ncommand = [${JSON.stringify(stage)}]\n`);
  const ids = [await queueTo(q.env, 'Bob@b.test, bob@b.test'), await queueTo(q.env, 'bob@b.test, Bob@b.test')];
  const r = await runBin('run-queue', ['--once'], { env: q.env });
  assert.equal(r.code, 0, r.stderr);
  for (const id of ids) {
    assert.match(r.stderr, new RegExp(`${id}: Bob@b\\.test: failed \\(NORECIPIENT\\)`));
    assert.match(r.stderr, new RegExp(`${id}: bob@b\\.test: delivered`));
  }
  assert.match(r.stderr, /2 delivered, 0 deferred, 2 failed, 2 notices/);
  // Each message's notice names the one that failed, not the one delivered.
  const notices = await listQueue(q.env);
  assert.deepEqual(
    notices.map((m) => m.notice),
    ['failure', 'failure'],
  );
  for (const n of notices) {
    const text = readFileSync(join(q.dir, 'queue', 'messages', `${n.queue_id}.ima`)).toString('latin1');
    assert.match(text, /Bob@b\.test: NORECIPIENT/);
    assert.doesNotMatch(text, /bob@b\.test: /);
  }
});

test('queue-mail: checks the message, takes recipients from the headers or --recipient, and stores nothing for bad input', async () => {
  const q = queueSetup({ sendMailConfig: sendMailConfig({}) });
  const id = await queue(q.env, [['to', 'bob@b.test, carol@c.test']], ['--recipient', 'dave@d.test']);
  const [m] = await listQueue(q.env);
  assert.equal(m.queue_id, id);
  assert.deepEqual(
    m.recipients.map((r) => [r.address, r.state, r.attempts]),
    [['dave@d.test', 'queued', 0]],
  );
  assert.equal(m.sender, '');
  // The stored message is a message (tar) with a message-id and date set once.
  const stored = readFileSync(join(q.dir, 'queue', 'messages', `${id}.ima`));
  const h = await headersOf(stored);
  assert.match(h.get('message-id')!, /^urn:uuid:/);
  assert.ok(h.get('date'));

  const bad = await runBin('queue-mail', [], { env: q.env, input: Buffer.from('not a tar archive at all\n'.repeat(40)) });
  assert.equal(bad.code, 65, bad.stderr);
  assert.match(bad.stderr, /^queue-mail: /);
  const none = await runBin('queue-mail', [], { env: q.env, input: await message([['subject', 'nobody']]) });
  assert.equal(none.code, 65);
  assert.match(none.stderr, /no recipients/);
  const usage = await runBin('queue-mail', ['--recipient', 'not an address'], { env: q.env, input: await message([['to', 'bob@b.test']]) });
  assert.equal(usage.code, 64);
  assert.equal((await listQueue(q.env)).length, 1);
  assert.deepEqual(readdirSync(join(q.dir, 'queue', 'tmp')), []);
  if (process.getuid?.() === 0) {
    const root = await runBin('run-queue', ['--once'], { env: { ...q.env, IMA_ALLOW_ROOT: undefined } });
    assert.equal(root.code, 77, 'run-queue refuses to run as root');
    assert.match(root.stderr, /refusing to run as root/);
  }
});

test('queue-mail: a --recipient naming no address is a usage error (64) naming it, not a message without recipients', async () => {
  const q = queueSetup({ sendMailConfig: sendMailConfig({}) });
  for (const given of ['', ' , ']) {
    const r = await runBin('queue-mail', ['--recipient', 'bob@b.test', '--recipient', given], { env: q.env, input: await message([['to', 'bob@b.test']]) });
    assert.equal(r.code, 64, r.stderr);
    assert.equal(r.stderr, `queue-mail: --recipient ${JSON.stringify(given)}: no address\n`);
  }
  assert.deepEqual(await listQueue(q.env), []);
});

/** run-queue as the service runs it (--verbose, and `args`): `seen` waits for its log to match, 20 s at most. */
function daemon(env: Record<string, string | undefined>, args: string[] = []) {
  const proc = spawn(join(BIN, 'run-queue'), ['--verbose', ...args], { env: env as NodeJS.ProcessEnv, stdio: ['ignore', 'ignore', 'pipe'] });
  let text = '';
  proc.stderr.on('data', (d: Buffer) => (text += d));
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((res) => proc.once('exit', (code, sig) => res([code, sig])));
  const seen = (re: RegExp) =>
    new Promise<void>((res, rej) => {
      const done = (e?: Error) => {
        clearTimeout(t);
        proc.stderr.off('data', check);
        proc.off('exit', gone);
        if (e) rej(e);
        else res();
      };
      const check = () => re.test(text) && done();
      const gone = () => done(new Error(`run-queue exited before ${re}: ${text}`));
      const t = setTimeout(() => done(new Error(`no ${re} within 20 s in: ${text}`)), 20_000);
      proc.stderr.on('data', check);
      proc.once('exit', gone);
      check();
    });
  return { proc, seen, exited, log: () => text };
}

test('list-queue: a state it cannot read is named on stderr, the others listed, and the exit is 75 (the list is not whole)', async () => {
  const q = queueSetup({ sendMailConfig: sendMailConfig({}) });
  const good = await queueTo(q.env, 'yan@y.test');
  const bad = await queueTo(q.env, 'zoe@z.test');
  writeFileSync(join(q.dir, 'queue', 'messages', `${bad}.state`), '{ not json');
  const r = await runBin('list-queue', ['--json'], { env: q.env });
  assert.equal(r.code, 75, r.stderr);
  assert.match(r.stderr, new RegExp(`${bad}\\.state: unreadable state`));
  assert.deepEqual(
    r.stdout
      .toString()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l).queue_id),
    [good],
  );
});

test("list-queue: a crashed run-queue's pid file naming a pid reused by another program: the request is applied here and that program is not signalled", async () => {
  const q = queueSetup({ sendMailConfig: sendMailConfig({}) });
  const id = await queueTo(q.env, 'yan@y.test');
  const unrelated = spawn('sleep', ['60']);
  try {
    writeFileSync(join(q.dir, 'queue', 'run-queue.pid'), `${unrelated.pid}\n`);
    const r = await runBin('list-queue', ['--hold', id, '--wait', '5s'], { env: q.env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.toString(), `hold ${id}: ${id}\n`);
    assert.equal((await listQueue(q.env)).find((m) => m.queue_id === id)?.held, true);
    assert.equal(unrelated.exitCode, null, 'the unrelated program is still running');
    assert.equal(unrelated.signalCode, null);
  } finally {
    unrelated.kill();
  }
});

test('list-queue lists oldest first and run-queue delivers oldest first, also among messages of one second', async () => {
  const q = queueSetup({ sendMailConfig: sendMailConfig({}), runQueue: 'max_parallel = 1\n' });
  q.answer({ 'y.test': 'OK' });
  // Queued one after the other, about ten a second: ids of one second carry random hex, not the order.
  const queued: string[] = [];
  for (let i = 0; i < 12; i++) queued.push(await queueTo(q.env, `m${i}@y.test`));
  const seconds = new Set(queued.map((id) => id.slice(0, 15)));
  assert.ok(seconds.size < queued.length, `some messages must share a second: ${queued.join(' ')}`);
  assert.deepEqual(
    (await listQueue(q.env)).map((m) => m.queue_id),
    queued,
  );
  const text = (await runBin('list-queue', [], { env: q.env })).stdout.toString();
  assert.deepEqual(
    text
      .split('\n')
      .filter((l) => /^\d{8}T/.test(l))
      .map((l) => l.split(' ')[0]),
    queued,
  );
  const r = await runBin('run-queue', ['--once'], { env: q.env });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(
    q.given().map((g) => g.rcpts.join(' ')),
    queued.map((_, i) => `m${i}@y.test`),
  );
});

test('list-queue: --hold ID1 ID2 is refused (64, naming ID2) and holds nothing: each target needs its own option', async () => {
  const q = queueSetup({ sendMailConfig: sendMailConfig({}) });
  const [one, two] = [await queueTo(q.env, 'yan@y.test'), await queueTo(q.env, 'zoe@z.test')];
  const r = await runBin('list-queue', ['--hold', one, two], { env: q.env });
  assert.equal(r.code, 64, r.stderr);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`^list-queue: unexpected argument "${two}"`));
  assert.deepEqual(
    (await listQueue(q.env)).map((m) => m.held),
    [false, false],
  );
  for (const wait of ['xx', '600h']) {
    const w = await runBin('list-queue', ['--hold', one, '--wait', wait], { env: q.env });
    assert.equal(w.code, 64, w.stderr);
    assert.match(w.stderr, new RegExp(`^list-queue: --wait: ${wait} `));
  }
  const held = await runBin('list-queue', ['--hold', one, '--hold', two], { env: q.env });
  assert.equal(held.code, 0, held.stderr);
  assert.deepEqual(
    (await listQueue(q.env)).map((m) => m.held),
    [true, true],
  );
});

test('list-queue: hold, release, retry and delete take effect on a running run-queue', async () => {
  const q = queueSetup({ sendMailConfig: sendMailConfig({}), runQueue: 'min_backoff = "1h"\n' });
  q.answer({ 'y.test': 'TEMPFAIL', 'z.test': 'TEMPFAIL' });
  const keep = await queueTo(q.env, 'yan@y.test');
  const drop = await queueTo(q.env, 'zoe@z.test');
  const { proc, seen, log } = daemon(q.env);
  try {
    await seen(/yan@y\.test: deferred[^]*zoe@z\.test: deferred|zoe@z\.test: deferred[^]*yan@y\.test: deferred/);
    // A second run-queue is refused while this one runs.
    const twice = await runBin('run-queue', ['--once'], { env: q.env });
    assert.equal(twice.code, 75);
    assert.match(twice.stderr, /run-queue is running \(pid \d+\)/);

    const ok = async (args: string[]) => {
      const r = await runBin('list-queue', args, { env: q.env });
      assert.equal(r.code, 0, r.stderr);
    };
    await ok(['--hold', keep]);
    assert.equal((await listQueue(q.env)).find((m) => m.queue_id === keep)?.held, true);
    await ok(['--delete', drop]);
    assert.deepEqual(
      (await listQueue(q.env)).map((m) => m.queue_id),
      [keep],
    );
    assert.equal(existsSync(join(q.dir, 'queue', 'messages', `${drop}.ima`)), false);
    q.answer({ 'y.test': 'OK' });
    const before = q.given().length;
    await ok(['--retry', 'ALL']);
    await ok(['--retry', '@y.test']); // applied after the pass that followed the first: a held message was not tried
    assert.equal(q.given().length, before, 'a held message is not delivered');
    await ok(['--release', keep]);
    await ok(['--retry', keep]);
    await seen(/yan@y\.test: delivered/);
    await seen(/done/);
    assert.deepEqual(await listQueue(q.env), []);
    assert.equal(q.given().filter((g) => g.rcpts.includes('zoe@z.test')).length, 1, 'the deleted message was not tried again');
    // SIGHUP with a broken config: reported, the old one kept, still serving.
    writeFileSync(join(q.dir, 'run-queue.toml'), 'max_parallel = "many"\n');
    proc.kill('SIGHUP');
    await seen(/max_parallel: must be a whole number[^]*keeping the old one/);
    q.answer({ 'y.test': 'OK' });
    await queueTo(q.env, 'yve@y.test');
    await seen(/yve@y\.test: delivered/);
  } finally {
    proc.kill('SIGTERM');
    if (proc.exitCode === null) await once(proc, 'exit');
  }
  assert.equal(proc.exitCode, 0, log());
  assert.match(log(), /stopping/);
});

test('run-queue --once (cron): list-queue nudging it with SIGHUP mid-delivery does not kill it; SIGTERM lets the running delivery finish and starts no other', async () => {
  const q = queueSetup({ sendMailConfig: sendMailConfig({}) });
  // A stage that says it has the message, waits for the test's word on a FIFO, then delivers every recipient.
  const go = join(q.dir, 'go');
  execFileSync('mkfifo', [go]);
  const stage = join(q.dir, 'held-stage.sh');
  writeFileSync(
    stage,
    `#!/bin/sh\necho stage has it >&2\nread word < ${go}\ncat >/dev/null\nwhile [ $# -gt 0 ]; do [ "$1" = --recipient ] && echo "OK $2"; shift; done\n`,
    { mode: 0o755 },
  );
  writeFileSync(join(q.dir, 'run-queue.toml'), `queue_dir = "queue"\ncommand = [${JSON.stringify(stage)}]\nmax_parallel = 1\n`);
  const pidFile = join(q.dir, 'queue', 'run-queue.pid');
  const once = () => daemon(q.env, ['--once']);

  // SIGHUP from list-queue while the stage runs: the request is taken after the pass, both exit 0.
  const first = await queueTo(q.env, 'yan@y.test');
  const a = once();
  await a.seen(/stage has it/);
  const hold = runBin('list-queue', ['--hold', first, '--wait', '60s'], { env: q.env });
  await a.seen(/SIGHUP: the requests are taken when this pass is done/);
  writeFileSync(go, 'go\n');
  assert.deepEqual(await a.exited, [0, null], a.log());
  const held = await hold;
  assert.equal(held.code, 0, held.stderr);
  assert.match(a.log(), /yan@y\.test: delivered/);
  assert.equal(existsSync(pidFile), false, 'the lock is gone');

  // SIGTERM while the stage runs: that delivery finishes and is recorded; the second message is not started.
  const [second, third] = [await queueTo(q.env, 'yve@y.test'), await queueTo(q.env, 'zed@z.test')];
  const b = once();
  await b.seen(/stage has it/);
  b.proc.kill('SIGTERM');
  await b.seen(/stopping: letting running deliveries finish/);
  writeFileSync(go, 'go\n');
  assert.deepEqual(await b.exited, [0, null], b.log());
  assert.equal(existsSync(pidFile), false, 'the lock is gone');
  const left = (await listQueue(q.env)).map((m) => m.queue_id);
  assert.equal(left.length, 1, `one delivered, one never started: ${b.log()}`);
  assert.ok([second, third].includes(left[0]!));
  assert.equal((await listQueue(q.env))[0]!.recipients[0]!.attempts, 0, 'the other was not tried');
});

test(
  'run-queue: one queued message to an IMA domain and a legacy one: IMDP for the first, smtp-send (SMTP, to smtp-sink) for the other',
  { skip: smtpSinkMissing },
  async () => {
    const sink = await startSink([]);
    try {
      const outB = outDir();
      const b = await server('b.test', outB);
      // dns_srv off and legacy = "auto": a domain outside [servers] goes to smtp-send, here by the smarthost.
      const q = queueSetup({ sendMailConfig: sendMailConfig({ 'b.test': `127.0.0.1:${b.port}` }), direct: true });
      writeFileSync(join(q.dir, 'smtp-send.toml'), `[smarthost]\nhost = "127.0.0.1:${sink.port}"\ntls = "may"\n`);
      await queueTo(q.env, 'bob@b.test, zoe@legacy.test');
      const r = await runBin('run-queue', ['--once'], { env: q.env });
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(await listQueue(q.env), [], 'both recipients delivered, nothing left queued');
      assert.equal(imaFiles(outB).length, 1);
      assert.match(r.stderr, /zoe@legacy\.test/);
    } finally {
      await sink.stop();
    }
  },
);

test(
  'run-queue: a notice to a legacy domain goes out over SMTP from the null sender (MAIL FROM:<>, RFC 5321 4.5.5); an ordinary message keeps its from',
  { skip: smtpSinkMissing },
  async () => {
    const sink = await startSink(['-v']);
    try {
      // dns_srv off and legacy = "auto": a.test, outside [servers], goes to smtp-send (by the smarthost, the sink).
      const q = queueSetup({ sendMailConfig: sendMailConfig({}), direct: true });
      writeFileSync(join(q.dir, 'smtp-send.toml'), `[smarthost]\nhost = "127.0.0.1:${sink.port}"\ntls = "may"\n`);
      const notice = await buildNotice({
        kind: 'failure',
        state: { id: '20260101T000000-0123456789', sender: 'alice@a.test', subject: 'plans', message_id: '', arrival: '2026-01-01T00:00:00Z' },
        recipients: [{ address: 'zed@x.test', last_reply: 'FAIL 5.1.1 no such user here', attempts: 1 }],
        headers: Buffer.alloc(0),
        from: 'mailer-daemon@a.test',
        now: Date.now(),
        giveUpAt: 0,
      });
      const queued = await runBin('queue-mail', [], { env: q.env, input: notice });
      assert.equal(queued.code, 0, queued.stderr);
      await queueTo(q.env, 'zoe@a.test');
      const r = await runBin('run-queue', ['--once'], { env: q.env });
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(await listQueue(q.env), [], 'both delivered');
      const deadline = Date.now() + 5000;
      while ((sink.output().match(/MAIL FROM:/g) ?? []).length < 2 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
      const senders = (sink.output().match(/MAIL FROM:<[^>]*>/g) ?? []).sort();
      assert.deepEqual(senders, ['MAIL FROM:<>', 'MAIL FROM:<alice@a.test>'], sink.output());
    } finally {
      await sink.stop();
    }
  },
);
