// Shared bench plumbing: run a command and poll its peak RSS (VmHWM) from
// /proc; make the inputs (a 4 KB message, a large file of a fixed pattern).
import { spawn, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { PassThrough } from 'node:stream';
import { Headers, bufferPart, writeMessage } from '../src/message/index.js';

export interface Measured {
  code: number | null;
  seconds: number;
  peakRssMb: number;
  stderr: string;
}

function hwmKb(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** Peak RSS so far of a running process, in MB (0 once it is gone). */
export const peakRssMb = (pid: number) => hwmKb(pid) / 1024;

/** Run argv with stdout to a file descriptor or ignored; report wall time and peak RSS. */
export function measure(
  argv: string[],
  opts: { stdout?: number | 'ignore' | 'inherit'; stdin?: number | 'ignore'; env?: NodeJS.ProcessEnv } = {},
): Promise<Measured> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(argv[0], argv.slice(1), { stdio: [opts.stdin ?? 'ignore', opts.stdout ?? 'ignore', 'pipe'], env: opts.env ?? process.env });
    let peak = 0;
    let stderr = '';
    child.stderr!.on('data', (c) => (stderr += c));
    const timer = setInterval(() => (peak = Math.max(peak, hwmKb(child.pid!))), 20);
    child.on('error', reject);
    child.on('exit', (code) => {
      clearInterval(timer);
      resolve({ code, seconds: Number(process.hrtime.bigint() - t0) / 1e9, peakRssMb: peak / 1024, stderr });
    });
  });
}

export const mb = (bytes: number) => bytes / (1024 * 1024);

/** Median wall time of running argv, in ms (start-up cost of a program). */
export function startupMs(argv: string[], runs = 10): number {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    spawnSync(argv[0], argv.slice(1), { stdio: 'ignore' });
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return times.sort((a, b) => a - b)[Math.floor(runs / 2)];
}

/** A small message (about 4 KB with the default body) from alice@a.test, with a fresh message-id. */
export async function smallMessage(to: string[] = ['bob@b.test'], extra: [string, string][] = [], bodyBytes = 3800): Promise<Buffer> {
  const h = new Headers()
    .add('from', 'alice@a.test')
    .add('to', to.join(', '))
    .add('subject', 'bench')
    .add('date', '2026-11-23T00:00:00Z')
    .add('message-id', `urn:uuid:${randomUUID()}`);
  for (const [k, v] of extra) h.add(k, v);
  const out = new PassThrough();
  const parts: Buffer[] = [];
  out.on('data', (c: Buffer) => parts.push(c));
  await writeMessage(out, { headers: h, body: bufferPart(Buffer.alloc(bodyBytes, 'x')) });
  return Buffer.concat(parts);
}

/** A file of `size` bytes of a fixed pattern that compresses badly, written in 4 MiB blocks. */
export function patternFile(path: string, size: number): void {
  const fd = openSync(path, 'w');
  const chunk = Buffer.alloc(4 * 1024 * 1024);
  for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((i * 2654435761) >>> 0, i);
  for (let left = size; left > 0; left -= chunk.length) writeSync(fd, chunk, 0, Math.min(left, chunk.length));
  closeSync(fd);
}
