// `workers` (src/net/workers.ts), seen as an operator sees it: server-receive
// as real processes, the primary and its workers in /proc, signals sent by
// hand, messages delivered over real mutual TLS.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { basicFields, config, connect, deliver, dir, message, outDir, startServer } from '../imdp-fixture.js';
import { BIN, childrenOf, pidGone, runBin, startListening, testEnv } from '../helpers.js';

/** How often `re` occurs in `s`. */
const times = (s: string, re: RegExp) => s.match(new RegExp(re.source, 'g'))?.length ?? 0;

async function sendOne(port: number, body: string): Promise<string | undefined> {
  const c = await connect(port);
  const r = await deliver(c, await message(basicFields(), body));
  await c.done();
  return r.result?.word;
}

/** A handler chain into a real mailbox (bob@b.test): handle-incoming-mail -> give-recipient, in-process. */
function mailboxHandler(): { handler: string[]; delivered: () => number } {
  const out = outDir();
  for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(out, 'bob', f), { recursive: true });
  const him = join(out, 'handle-incoming-mail.toml');
  writeFileSync(him, `[domains."b.test"]\ncommand = ["give-recipient", "--address", "{address}", ${JSON.stringify(join(out, '{local}'))}]\nusers = ["bob"]\n`);
  return { handler: ['handle-incoming-mail', '--config', him], delivered: () => readdirSync(join(out, 'bob', 'new')).length };
}

test('server-receive with workers = 2: two processes serve one socket; SIGHUP reaches both, a killed one is replaced, SIGTERM stops all', async () => {
  const box = mailboxHandler();
  const s = await startServer(config({ handler: box.handler }).replace('[tls]', 'workers = 2\n[tls]'));
  try {
    await s.waitLog(/2 workers serving/);
    const workers = childrenOf(s.proc.pid!);
    assert.equal(workers.length, 2, s.log());

    // Six connections at once: each is answered OK, whichever worker takes it.
    const words = await Promise.all(Array.from({ length: 6 }, (_, i) => sendOne(s.port, `message ${i}\n`)));
    assert.deepEqual(words, Array(6).fill('OK'));
    assert.equal(box.delivered(), 6);

    process.kill(s.proc.pid!, 'SIGHUP');
    await s.waitLog(/(reloaded configuration[^\n]*\n[^]*){2}/);
    assert.equal(times(s.log(), /reloaded configuration/), 2);

    process.kill(workers[0], 'SIGKILL');
    await s.waitLog(new RegExp(`worker ${workers[0]} died \\(signal SIGKILL\\): starting another`));
    await s.waitLog(/(listening on [^\n]*\n[^]*){3}/); // the replacement listens on the same socket
    const now = childrenOf(s.proc.pid!);
    assert.equal(now.length, 2);
    assert.ok(!now.includes(workers[0]));
    assert.equal(await sendOne(s.port, 'after the replacement\n'), 'OK');
    assert.equal(box.delivered(), 7);

    s.proc.kill('SIGTERM');
    const [code] = (await once(s.proc, 'exit')) as [number];
    assert.equal(code, 0, s.log());
    for (const pid of now) assert.ok(pidGone(pid), `worker ${pid} still running after the primary exited`);
  } finally {
    await s.stop();
  }
});

test('server-receive with workers = 2: a SIGHUP while the workers are still starting kills none; each reloads once it serves', async () => {
  const file = join(dir, 'workers-hup-early.toml');
  writeFileSync(file, config().replace('[tls]', 'workers = 2\n[tls]'));
  const proc = spawn(join(BIN, 'server-receive'), ['--config', file, '--listen', '127.0.0.1:0'], { env: testEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  proc.stderr.on('data', (d: Buffer) => (log += d));
  try {
    // The workers exist (forked) but take a while to start: the signal comes before either listens.
    for (const t0 = Date.now(); childrenOf(proc.pid!).length < 2; await new Promise((res) => setTimeout(res, 2)))
      if (Date.now() - t0 > 10_000) throw new Error(`no two workers within 10 s: ${log}`);
    assert.doesNotMatch(log, /listening on/);
    proc.kill('SIGHUP');
    await new Promise<void>((res, rej) => {
      const t = setTimeout(() => rej(new Error(`no two reloads within 20 s: ${log}`)), 20_000);
      const check = () => times(log, /reloaded configuration/) === 2 && (clearTimeout(t), res());
      proc.stderr.on('data', check);
      proc.once('exit', () => (clearTimeout(t), rej(new Error(`server-receive exited: ${log}`))));
    });
    assert.match(log, /2 workers serving/);
    assert.doesNotMatch(log, /stopped before serving|could not start/);
  } finally {
    proc.kill('SIGTERM');
    if (proc.exitCode === null && proc.signalCode === null) await once(proc, 'exit');
  }
  assert.equal(proc.exitCode, 0, log);
});

test('server-receive with workers = 2: a TLS session made with one worker resumes on the other', async () => {
  const s = await startServer(config().replace('[tls]', 'workers = 2\n[tls]'));
  try {
    await s.waitLog(/2 workers serving/);
    const resumedOnce = async () => {
      // The greeting comes after the server's ticket (TLS 1.3 sends it after the handshake).
      const c = await connect(s.port);
      const reused = c.socket.isSessionReused();
      await c.done();
      return reused;
    };
    assert.equal(await resumedOnce(), false);
    // Each worker in turn is the only one that can accept (the other stopped):
    // the ticket a client holds comes from either, and must open on both.
    const [x, y] = childrenOf(s.proc.pid!);
    const resumed: boolean[] = [];
    for (const stopped of [x, y, x]) {
      process.kill(stopped, 'SIGSTOP');
      try {
        resumed.push(await resumedOnce());
      } finally {
        process.kill(stopped, 'SIGCONT');
      }
    }
    assert.deepEqual(resumed, [true, true, true]);
  } finally {
    await s.stop();
  }
});

for (const workers of [1, 2]) {
  test(`server-receive with workers = ${workers}: after SIGHUP a session made before is not resumed (new ticket keys: a replaced certificate is not trusted on)`, async () => {
    const s = await startServer(config().replace('[tls]', `workers = ${workers}\n[tls]`));
    try {
      const resumedOnce = async () => {
        const c = await connect(s.port);
        const reused = c.socket.isSessionReused();
        await c.done();
        return reused;
      };
      await s.waitLog(/listening on/);
      assert.equal(await resumedOnce(), false);
      assert.equal(await resumedOnce(), true);
      process.kill(s.proc.pid!, 'SIGHUP');
      await s.waitLog(new RegExp(`(reloaded configuration[^]*){${workers}}`));
      assert.equal(await resumedOnce(), false);
    } finally {
      await s.stop();
    }
  });
}

test('server-receive with workers: a replacement that cannot start (the config broken since) is not retried; the other worker goes on serving', async () => {
  const box = mailboxHandler();
  const file = join(dir, 'workers-broken-later.toml');
  writeFileSync(file, config({ handler: box.handler }).replace('[tls]', 'workers = 2\n[tls]'));
  const s = await startListening('server-receive', ['--config', file, '--listen', '127.0.0.1:0']);
  try {
    await s.waitLog(/2 workers serving/);
    const [x] = childrenOf(s.proc.pid!);
    writeFileSync(file, 'domain = 7\n');
    process.kill(x, 'SIGKILL');
    await s.waitLog(/could not start \(exit code 78\): serving with 1 worker\(s\)/);
    assert.match(s.log(), /domain: /); // the replacement said what is wrong with the config
    assert.equal(childrenOf(s.proc.pid!).length, 1);
    assert.equal(await sendOne(s.port, 'to the one left\n'), 'OK');
    assert.equal(box.delivered(), 1);
  } finally {
    await s.stop();
  }
});

test('server-receive with workers: a worker that cannot start (port taken) stops the whole, with its exit code, and is not restarted', async () => {
  const taken = createServer();
  await new Promise<void>((res) => taken.listen(0, '127.0.0.1', res));
  const port = (taken.address() as AddressInfo).port;
  try {
    const file = join(dir, 'workers-taken.toml');
    writeFileSync(file, config().replace('[tls]', 'workers = 2\n[tls]'));
    const r = await runBin('server-receive', ['--config', file, '--listen', `127.0.0.1:${port}`]);
    assert.equal(r.code, 75, r.stderr);
    assert.match(r.stderr, /EADDRINUSE/);
    assert.match(r.stderr, /stopped before serving/);
    assert.doesNotMatch(r.stderr, /starting another/);
  } finally {
    taken.close();
  }
});

test('server-receive --check-config: workers > 1 with metrics is a config error naming the key', async () => {
  const file = join(dir, 'workers-metrics.toml');
  writeFileSync(file, `metrics = "127.0.0.1:0"\n${config().replace('[tls]', 'workers = 2\n[tls]')}`);
  const r = await runBin('server-receive', ['--config', file, '--check-config']);
  assert.equal(r.code, 78, r.stderr);
  assert.match(r.stderr, /workers-metrics\.toml: workers: more than one worker and metrics exclude each other/);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
});

test('server-receive with workers = 1 (the default) is one process', async () => {
  const file = join(dir, 'workers-one.toml');
  writeFileSync(file, config());
  const s = await startListening('server-receive', ['--config', file, '--listen', '127.0.0.1:0']);
  try {
    assert.deepEqual(childrenOf(s.proc.pid!), []);
  } finally {
    await s.stop();
  }
});
