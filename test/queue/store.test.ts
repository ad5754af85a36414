import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { DirQueue } from '../../src/queue/store.js';
import { tempDir } from '../helpers.js';

/** The pid of a process that has exited: what a crashed run-queue leaves in its pid file. */
function deadPid(): number {
  const p = spawnSync('sh', ['-c', 'echo $$']);
  return Number(String(p.stdout).trim());
}

const STORE = fileURLToPath(new URL('../../src/queue/store.js', import.meta.url));

test("queue lock: of two taking over a crashed holder's stale lock at once, one gets it and the other is refused", async () => {
  for (let round = 0; round < 20; round++) {
    const dir = tempDir('queue-lock-');
    const [a, b] = [await new DirQueue(dir).init(), new DirQueue(dir)];
    writeFileSync(a.pidFile, `${deadPid()}\n`);
    const got = await Promise.allSettled([a.lock(), b.lock()]);
    const held = got.filter((r) => r.status === 'fulfilled');
    assert.equal(held.length, 1, `round ${round}: ${held.length} hold the lock`);
    const refused = got.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    assert.match(String(refused.reason), /run-queue\.pid: run-queue is running/);
    await (held[0] as PromiseFulfilledResult<() => Promise<void>>).value();
  }
});

test('queue lock: held by a live process it is refused naming its pid; once that process is killed, it is taken at once', async () => {
  const dir = tempDir('queue-lock-');
  const q = await new DirQueue(dir).init();
  const holder = spawn(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `const { DirQueue } = await import(${JSON.stringify(STORE)}); await new DirQueue(process.argv[1]).lock(); console.log('locked'); setInterval(() => {}, 1000);`,
      dir,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  try {
    const [line] = (await Promise.race([once(holder.stdout, 'data'), once(holder, 'exit')])) as [Buffer];
    assert.equal(String(line).trim(), 'locked');
    await assert.rejects(q.lock(), new RegExp(`run-queue is running \\(pid ${holder.pid}\\)`));
    holder.kill('SIGKILL');
    await once(holder, 'exit');
    assert.equal(readFileSync(q.pidFile, 'utf8').trim(), String(holder.pid), 'the killed holder left its pid file');
    const release = await q.lock();
    assert.equal(readFileSync(q.pidFile, 'utf8').trim(), String(process.pid));
    await release();
    assert.equal(await q.lockHolder(), undefined, 'released: no pid file');
  } finally {
    holder.kill('SIGKILL');
  }
});

test('queue lock: a pid file naming a live process that does not hold the lock names no holder, so list-queue signals nobody', async () => {
  const dir = tempDir('queue-lock-');
  const q = await new DirQueue(dir).init();
  const unrelated = spawn('sleep', ['60']);
  try {
    // A crashed run-queue's pid, since reused by another program; and this process's own pid (PID 1 again after a container restart).
    for (const pid of [unrelated.pid!, process.pid]) {
      writeFileSync(q.pidFile, `${pid}\n`);
      assert.equal(await q.lockHolder(), undefined, `pid ${pid}`);
    }
    const release = await q.lock();
    assert.equal(await new DirQueue(dir).lockHolder(), undefined, 'held by this process: not a holder to signal');
    await release();
  } finally {
    unrelated.kill();
  }
});
