// Local delivery of 4 KB messages against a C program doing
// write+fsync+rename+fsync(dir) per message (compiled here with cc):
// - in-process: handle-incoming-mail -> give-recipient inside one process,
//   8 at once, against the C loop (the peer: one delivery at a time,
//   so its rate is the disk's fsync latency) and against 8 C loops at once
//   (the same concurrency as ours, so the disk's throughput for both);
//   fsyncs per message counted by strace;
// - spawned: a handle-incoming-mail process per message, give-recipient
//   in-process inside it and as a process of its own, against the C program
//   started per message.
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { main as handleIncomingMail } from '../src/programs/handle-incoming-mail.js';
import { BIN, type Bench, ROOT, since } from './_bench.js';
import { imaMessage } from './_measure.js';
import { compileDeliver, have } from './_peers.js';

/** A mailbox root and a handle-incoming-mail config delivering b.test's users into it. */
function setup(dir: string, inProcess: boolean): string {
  for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(dir, 'mail', 'bob', f), { recursive: true });
  writeFileSync(join(dir, 'give-recipient.toml'), 'max_message_bytes = "2G"\n');
  const cfg = join(dir, 'handle-incoming-mail.toml');
  writeFileSync(
    cfg,
    `in_process = ${inProcess}\nmax_parallel = 8\nmax_message_bytes = "2G"\n[domains."b.test"]\ncommand = ["give-recipient", "--config", ${JSON.stringify(join(dir, 'give-recipient.toml'))}, "--address", "{address}", "${join(dir, 'mail', '{local}')}"]\n`,
  );
  return cfg;
}

/** n messages through handle-incoming-mail in this process, `concurrency` at once; messages/s. */
async function inProcessRate(env: NodeJS.ProcessEnv, cfg: string, n: number, concurrency: number): Promise<number> {
  const msgs = await Promise.all(Array.from({ length: n }, () => imaMessage(4096)));
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < n) {
        const m = msgs[next++];
        const code = await handleIncomingMail(['--config', cfg], {
          stdin: Readable.from([m]),
          stdout: new PassThrough().resume(),
          stderr: process.stderr,
          env,
          cwd: ROOT,
        });
        if (code !== 0) throw new Error(`handle-incoming-mail exited ${code}`);
      }
    }),
  );
  return n / since(t0);
}

/** The C loop k times at once into one mailbox (names carry the pid), n messages in all; messages/s. */
async function cLoopsRate(deliver: string, file: string, box: string, n: number, k: number): Promise<number> {
  const each = Math.ceil(n / k);
  const t0 = performance.now();
  await Promise.all(
    Array.from(
      { length: k },
      () =>
        new Promise<void>((resolve, reject) => {
          const p = spawn(deliver, ['loop', String(each), file, box], { stdio: ['ignore', 'ignore', 'pipe'] });
          let err = '';
          p.stderr.on('data', (d) => (err += d));
          p.on('error', reject);
          p.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`C loop exited ${code}: ${err}`))));
        }),
    ),
  );
  return (each * k) / since(t0);
}

function spawnedRate(argv: string[], env: NodeJS.ProcessEnv, msgs: Buffer[]): number {
  const t0 = performance.now();
  for (const m of msgs) {
    const r = spawnSync(argv[0], argv.slice(1), { input: m, env });
    if (r.status !== 0) throw new Error(`${argv[0]} exited ${r.status}: ${r.stderr}`);
  }
  return msgs.length / since(t0);
}

/** fsync(2)+fdatasync(2) calls per message of an in-process run of n, counted by strace in a child process. */
function fsyncsPerMessage(b: Bench, n: number): number | undefined {
  if (!have('strace')) return undefined;
  const dir = b.fresh('fsyncs');
  const cfg = setup(dir, true);
  const r = spawnSync('strace', ['-f', '-c', '-e', 'trace=fsync,fdatasync', process.execPath, fileURLToPath(import.meta.url), 'child', cfg, String(n)], {
    env: b.env,
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`strace child exited ${r.status}: ${r.stderr.slice(-1000)}`);
  const calls = [...r.stderr.matchAll(/^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync)$/gm)].reduce((a, m) => a + Number(m[1]), 0);
  return calls / n;
}

export async function run(b: Bench): Promise<void> {
  const dir = b.fresh('delivery');
  const deliver = compileDeliver(dir);
  const msg = await imaMessage(4096);
  writeFileSync(join(dir, 'one.ima'), msg);

  // In-process, 8 at once, against the C loop (sequential, as a delivery agent's loop).
  const n = b.n(2000, 400);
  // Written before the C loop runs, as a server's config is written long before mail comes (a config file
  // younger than 250 ms is read again on every run, see config.ts).
  const inProcessCfg = setup(b.fresh('inproc'), true);
  const cBox = b.fresh('c-loop');
  for (const f of ['tmp', 'new']) mkdirSync(join(cBox, f));
  let t0 = performance.now();
  const c = spawnSync(deliver, ['loop', String(n), join(dir, 'one.ima'), cBox]);
  if (c.status !== 0) throw new Error(`C loop: ${c.stderr}`);
  const cRate = n / since(t0);
  const ours = await inProcessRate(b.env, inProcessCfg, n, 8);
  b.row(`local delivery in-process, ${n} x 4 KB, 8 at once`, ours, 'msg/s', { name: 'C write+fsync+rename+fsync loop', figure: cRate }, '>= 0.6x');
  const c8Box = b.fresh('c-loops');
  for (const f of ['tmp', 'new']) mkdirSync(join(c8Box, f));
  const c8Rate = await cLoopsRate(deliver, join(dir, 'one.ima'), c8Box, n, 8);
  b.row(`local delivery in-process, ${n} x 4 KB, 8 at once, peer at the same concurrency`, ours, 'msg/s', { name: '8 C loops at once', figure: c8Rate }, '-');
  const fsyncs = fsyncsPerMessage(b, b.n(500, 200));
  if (fsyncs !== undefined) b.row('fsync calls per 4 KB message delivered in-process (strace -c)', fsyncs, 'per msg', { name: 'C loop', figure: 2 }, '<= 2.5');

  // Spawned: a process per message.
  const s = b.n(100, 30);
  const msgs = await Promise.all(Array.from({ length: s }, () => imaMessage(4096)));
  const cOne = b.fresh('c-one');
  for (const f of ['tmp', 'new']) mkdirSync(join(cOne, f));
  t0 = performance.now();
  const cSpawned = spawnedRate([deliver, 'one', cOne], b.env, msgs);
  for (const inProcess of [true, false]) {
    const cfg = setup(b.fresh(`spawned-${inProcess}`), inProcess);
    const rate = spawnedRate([join(BIN, 'handle-incoming-mail'), '--config', cfg], b.env, msgs);
    b.row(
      `spawned handle-incoming-mail per 4 KB message, give-recipient ${inProcess ? 'in-process' : 'spawned too'}`,
      rate,
      'msg/s',
      { name: 'C program spawned per message', figure: cSpawned },
      '>= 25 msg/s',
    );
  }
}

// The child strace watches: deliver n messages in-process, 8 at once.
if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2] === 'child') {
  const [cfg, n] = process.argv.slice(3);
  await inProcessRate(process.env, cfg, Number(n), 8);
}
