// Shared bench plumbing: run a command and poll its peak RSS (VmHWM) from
// /proc; make the inputs (a 4 KB message, a large file of a fixed pattern).
import { spawn, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { closeSync, openSync, readFileSync, readdirSync, writeSync } from 'node:fs';
import { PassThrough } from 'node:stream';
import { Headers, bufferPart, writeMessage } from '../src/message/index.js';
import { childrenOf } from '../test/helpers.js';

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

/** The largest peak RSS among a process and its children (a server's workers), in MB. */
export function largestPeakRssMb(pid: number): number {
  return Math.max(hwmKb(pid), ...childrenOf(pid).map(hwmKb)) / 1024;
}

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
  const h = benchHeaders(to, extra);
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

/** CPU seconds, user and system, of a process tree. */
export interface Cpu {
  user: number;
  system: number;
}

const TICKS_PER_SECOND = Number(spawnSync('getconf', ['CLK_TCK']).stdout?.toString().trim()) || 100;

/** A process and every live process below it, from /proc. */
function treeOf(root: number): number[] {
  const all = [root];
  for (let i = 0; i < all.length; i++) all.push(...childrenOf(all[i]));
  return all;
}

/**
 * CPU used so far by a process tree: each live process's own time plus what
 * its exited children used (cutime, cstime: the kernel adds a child's time to
 * its parent when it is reaped). So a Postfix smtpd that served its 100
 * sessions and exited still counts, in master's figures, and a difference of
 * two readings is what the tree used between them.
 */
export function treeCpu(root: number): Cpu {
  const cpu = { user: 0, system: 0 };
  for (const pid of treeOf(root)) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      // Fields after the command name (which may hold spaces): utime is field 14, stime 15, cutime 16, cstime 17.
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      cpu.user += (Number(f[11]) + Number(f[13])) / TICKS_PER_SECOND;
      cpu.system += (Number(f[12]) + Number(f[14])) / TICKS_PER_SECOND;
    } catch {
      // gone between the listing and the reading: its time is in its parent's now
    }
  }
  return cpu;
}

/** What a tree used from `before` to now, per message, in milliseconds; total, then the system part. */
export function cpuPerMessage(root: number, before: Cpu, messages: number): { ms: number; systemMs: number } {
  const now = treeCpu(root);
  const system = now.system - before.system;
  return { ms: ((now.user - before.user + system) * 1000) / messages, systemMs: (system * 1000) / messages };
}

/** Peak RSS (VmHWM, MB) of processes and all their descendants, by command name, sampled every 50 ms until stop(). */
export function rssWatcher(roots: () => number[]): { stop(): Map<string, number> } {
  const peaks = new Map<string, number>();
  const sample = () => {
    const pids = new Set(roots().flatMap(treeOf));
    for (const pid of pids) {
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
        const name = cmd.map((c) => c.split('/').pop()).find((c) => c && !['node', 'env', 'sh'].includes(c) && !c.startsWith('-')) ?? String(pid);
        peaks.set(name, Math.max(peaks.get(name) ?? 0, hwmKb(pid) / 1024));
      } catch {
        // gone
      }
    }
  };
  const timer = setInterval(sample, 50);
  return {
    stop() {
      clearInterval(timer);
      sample();
      return peaks;
    },
  };
}

/** The fixed header fields of a bench message (RFC 3339 / urn:uuid for IMA). */
function benchHeaders(to: string[], extra: [string, string][]): Headers {
  const h = new Headers()
    .add('from', 'alice@a.test')
    .add('to', to.join(', '))
    .add('subject', 'bench')
    .add('date', '2026-11-23T00:00:00Z')
    .add('message-id', `urn:uuid:${randomUUID()}`);
  for (const [k, v] of extra) h.add(k, v);
  return h;
}

/**
 * An IMA message whose content (headers entry plus body) is exactly
 * `contentBytes` bytes: "4 KB" is 4,096 bytes of content.
 */
export async function imaMessage(contentBytes: number, to: string[] = ['bob@b.test'], extra: [string, string][] = []): Promise<Buffer> {
  const h = benchHeaders(to, extra);
  const body = contentBytes - h.serialize().length;
  if (body < 0) throw new Error(`bench: headers alone exceed ${contentBytes} bytes`);
  const out = new PassThrough();
  const parts: Buffer[] = [];
  out.on('data', (c: Buffer) => parts.push(c));
  await writeMessage(out, { headers: h, body: bufferPart(lineBody(body)) });
  return Buffer.concat(parts);
}

/** `n` bytes of 76-character lines of text (CRLF ends), nothing to dot-stuff. */
export function lineBody(n: number, eol = '\n'): Buffer {
  const line = `${'x'.repeat(76 - eol.length)}${eol}`;
  return Buffer.from(line.repeat(Math.ceil(n / line.length)).slice(0, n));
}

/** The same message as RFC 5322 text for SMTP (CRLF), exactly `contentBytes` bytes. */
export function mimeMessage(contentBytes: number, seq: number): Buffer {
  const head = `From: alice@a.test\r\nTo: bob@b.test\r\nSubject: bench\r\nDate: Mon, 23 Nov 2026 00:00:00 +0000\r\nMessage-ID: <${randomUUID()}-${seq}@a.test>\r\n\r\n`;
  const body = lineBody(contentBytes - head.length - 2, '\r\n');
  return Buffer.concat([Buffer.from(head), body, Buffer.from('\r\n')]);
}

/**
 * A warning when dir is on ext4 without a journal (as this project's CI
 * machines are): there the kernel's inode allocator skips inodes deleted in
 * the last minute or more (ext4's recently_deleted, checked only without a
 * journal), scanning past each of them in kernel time at every file or
 * directory created. Right after a mass deletion (a test run, an earlier
 * bench), a delivery of 4 KB messages ran at 0.16x the C loop; minutes
 * later, at 0.84x. Undefined for any other file system.
 */
export function filesystemWarning(dir: string): string | undefined {
  let best: { mount: string; type: string; source: string } | undefined;
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPEROPTIONS
    const [left, right] = line.split(' - ');
    if (!right) continue;
    const mount = left.split(' ')[4].replace(/\\040/g, ' ');
    const [type, source] = right.split(' ');
    const inside = dir === mount || dir.startsWith(mount.endsWith('/') ? mount : `${mount}/`);
    if (inside && (!best || mount.length > best.mount.length)) best = { mount, type, source };
  }
  if (!best || best.type !== 'ext4') return undefined;
  const device = best.source.split('/').pop()!;
  let journals: string[] = [];
  try {
    journals = readdirSync('/proc/fs/jbd2');
  } catch {
    // No journal on any file system.
  }
  if (journals.some((j) => j.startsWith(`${device}-`))) return undefined;
  return `${dir} is on ext4 without a journal (${best.source}): creating a file costs more in the minutes after files were deleted on it, so figures that create files vary with what was deleted before; TMPDIR chooses another file system`;
}
