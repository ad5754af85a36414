// Local delivery: messages/s through handle-incoming-mail into give-recipient
// (every message fsync'ed), spawned and in-process, 1 and 5 recipients; a
// 1 GiB message end to end; start-up time of each program.
import { spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { main as handleIncomingMail } from '../src/programs/handle-incoming-mail.js';
import { mb, measure, patternFile, smallMessage, startupMs } from './_measure.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = join(ROOT, 'bin');
const USERS = ['u1', 'u2', 'u3', 'u4', 'u5'];

function setup(dir: string, inProcess: boolean): string {
  for (const u of USERS) for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(dir, 'mail', u, f), { recursive: true });
  const cfg = join(dir, `him-${inProcess}.toml`);
  writeFileSync(join(dir, 'give-recipient.toml'), 'max_message_bytes = "2G"\n');
  // give-recipient by its name: found on PATH when spawned, in the registry when in-process.
  writeFileSync(
    cfg,
    `in_process = ${inProcess}\nmax_parallel = 5\nmax_message_bytes = "2G"\n[domains."b.test"]\ncommand = ["give-recipient", "--address", "{address}", "${join(dir, 'mail', '{local}')}"]\n`,
  );
  return cfg;
}

const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${BIN}:${process.env.PATH}`, IMA_CONFIG_DIR: '/nonexistent', IMA_ALLOW_ROOT: '1' };

async function inProcessRate(cfg: string, rcpts: string[], n: number, concurrency: number): Promise<number> {
  const msgs = await Promise.all(Array.from({ length: n }, () => smallMessage(rcpts)));
  let next = 0;
  const t0 = process.hrtime.bigint();
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
  return n / (Number(process.hrtime.bigint() - t0) / 1e9);
}

async function spawnedRate(cfg: string, rcpts: string[], n: number): Promise<number> {
  const msgs = await Promise.all(Array.from({ length: n }, () => smallMessage(rcpts)));
  const t0 = process.hrtime.bigint();
  for (const m of msgs) {
    const r = spawnSync(join(BIN, 'handle-incoming-mail'), ['--config', cfg], { input: m, env });
    if (r.status !== 0) throw new Error(`handle-incoming-mail exited ${r.status}: ${r.stderr}`);
  }
  return n / (Number(process.hrtime.bigint() - t0) / 1e9);
}

export async function run(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ima-bench-delivery-'));
  env.IMA_CONFIG_DIR = dir; // give-recipient.toml: room for a 1 GiB message
  try {
    const spawned = setup(dir, false);
    const inproc = setup(dir, true);
    for (const k of [1, 5]) {
      const rcpts = USERS.slice(0, k).map((u) => `${u}@b.test`);
      console.log(
        `4 KB, ${k} recipient(s): spawned ${(await spawnedRate(spawned, rcpts, 30)).toFixed(1)} msg/s; in-process ${(await inProcessRate(inproc, rcpts, 500, 1)).toFixed(0)} msg/s sequential, ${(await inProcessRate(inproc, rcpts, 1000, 8)).toFixed(0)} msg/s with 8 at once`,
      );
    }
    const size = Number(process.env.BENCH_BYTES ?? 1024 ** 3);
    const big = join(dir, 'big.ima');
    const att = join(dir, 'big.bin');
    patternFile(att, size);
    const out = openSync(big, 'w');
    const mk = await measure([join(BIN, 'make-message'), '-r', 'a@a.test', '--no-body', '-a', att, 'u1@b.test'], { stdout: out });
    closeSync(out);
    rmSync(att);
    if (mk.code !== 0) throw new Error(mk.stderr);
    const input = openSync(big, 'r');
    const r = await measure([join(BIN, 'handle-incoming-mail'), '--config', inproc], { stdin: input, env, stdout: 'inherit' });
    closeSync(input);
    if (r.code !== 0) throw new Error(`1 GiB delivery failed: ${r.stderr}`);
    console.log(
      `${mb(size).toFixed(0)} MiB message through handle-incoming-mail (give-recipient in-process): ${(mb(size) / r.seconds).toFixed(0)} MB/s, peak RSS ${r.peakRssMb.toFixed(1)} MB`,
    );
    const bare = startupMs([process.execPath, '-e', '0']);
    const gr = startupMs([join(BIN, 'give-recipient'), '--version']);
    const him = startupMs([join(BIN, 'handle-incoming-mail'), '--version']);
    console.log(`start-up: node -e 0 ${bare.toFixed(0)} ms, give-recipient ${gr.toFixed(0)} ms, handle-incoming-mail ${him.toFixed(0)} ms (median of 10)`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
