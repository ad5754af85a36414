// Shared test plumbing: run a program in-process through main(args, io), or
// as a real process through bin/NAME, and collect exit code and output.
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { loadProgram, type ProgramName } from '../src/programs/index.js';
import type { Io } from '../src/io.js';

export const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
export const BIN = join(ROOT, 'bin');

export interface Result {
  code: number | null;
  signal?: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
}

export interface RunOptions {
  input?: Buffer | string | Readable;
  env?: Record<string, string | undefined>;
  cwd?: string;
}

/**
 * An isolated environment: no user or system config is read unless the test gives one; the toolkit's bin/ is on PATH, as after npm install -g.
 * CI runs as root, which servers and delivery stages refuse: IMA_ALLOW_ROOT=1 lets them (privileges.test.ts checks the refusal itself).
 */
export function testEnv(extra: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return { PATH: `${BIN}:${process.env.PATH}`, HOME: '/nonexistent', IMA_CONFIG_DIR: '/nonexistent', IMA_ALLOW_ROOT: '1', ...extra };
}

function collect(s: Readable): Promise<Buffer> {
  return new Promise((res, rej) => {
    const parts: Buffer[] = [];
    s.on('data', (c: Buffer) => parts.push(c));
    s.on('end', () => res(Buffer.concat(parts)));
    s.on('error', rej);
  });
}

function asStream(input: RunOptions['input']): Readable {
  if (input instanceof Readable) return input;
  return Readable.from(input === undefined ? [] : [Buffer.from(input)]);
}

/** Run a toolkit program in this process, as a server would. */
export async function runMain(name: ProgramName, args: string[], opts: RunOptions = {}): Promise<Result> {
  const main = await loadProgram(name);
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const io: Io = { stdin: asStream(opts.input), stdout, stderr, env: opts.env ?? testEnv(), cwd: opts.cwd ?? process.cwd() };
  const out = collect(stdout);
  const err = collect(stderr);
  const code = await main(args, io);
  stdout.end();
  stderr.end();
  return { code, stdout: await out, stderr: (await err).toString() };
}

/** Run bin/NAME as a real process. */
export function runBin(name: string, args: string[], opts: RunOptions = {}): Promise<Result> {
  return runCommand(join(BIN, name), args, { ...opts, env: opts.env ?? testEnv() });
}

/** Run any command (GNU tar, openssl) with an argv array. */
export function runCommand(cmd: string, args: string[], opts: RunOptions = {}): Promise<Result> {
  return new Promise((res, rej) => {
    const child = spawn(cmd, args, { env: opts.env ?? process.env, cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    const out = collect(child.stdout);
    const err = collect(child.stderr);
    child.stdin.on('error', () => {});
    asStream(opts.input).pipe(child.stdin);
    child.on('error', rej);
    child.on('close', async (code, signal) => res({ code, signal, stdout: await out, stderr: (await err).toString() }));
  });
}

/**
 * Run bin/NAME with `input` written to stdin, which is then held open (a
 * writer with more to send): how it exits, and its stdout. A program still
 * running after 20 s is killed (code null).
 */
export async function runHoldingStdin(name: string, args: string[], input: Buffer): Promise<{ code: number | null; stdout: string }> {
  const child = spawn(join(BIN, name), args, { env: testEnv() as NodeJS.ProcessEnv, stdio: ['pipe', 'pipe', 'pipe'] });
  const out = collect(child.stdout);
  child.stderr.resume();
  child.stdin.on('error', () => {});
  child.stdin.write(input);
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  child.stdin.destroy();
  return { code, stdout: (await out).toString() };
}

const made: string[] = [];
process.on('exit', () => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

/** A fresh temporary directory, removed when the test process exits. */
export function tempDir(prefix = 'ima-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  made.push(dir);
  return dir;
}

export interface Listening {
  proc: ChildProcess;
  port: number;
  /** Everything it has written to stderr so far. */
  log(): string;
  /** Wait until its stderr matches `re` (an event, with a deadline). */
  waitLog(re: RegExp, deadline?: number): Promise<void>;
  /** SIGTERM, then wait for it to exit. */
  stop(): Promise<void>;
}

/**
 * Start a server, bin/NAME with args that include --listen on port 0, and
 * wait for its "listening on ADDRESS:PORT" line (an event, not a delay).
 * Stderr lines matching `echo` are also passed on to ours.
 */
export async function startListening(
  name: string,
  args: string[],
  opts: { env?: Record<string, string | undefined>; echo?: RegExp; launcher?: string[] } = {},
): Promise<Listening> {
  // A launcher (node dist/test/faulty.js) runs the program in place of bin/NAME.
  const [cmd, ...pre] = opts.launcher ? [...opts.launcher, name] : [join(BIN, name)];
  const proc = spawn(cmd, [...pre, ...args], { env: opts.env ?? testEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  proc.stderr!.on('data', (d: Buffer) => {
    log += d;
    if (opts.echo?.test(String(d))) process.stderr.write(d);
  });
  const port = await new Promise<number>((res, rej) => {
    const seen = () => {
      const m = /listening on [^\n]*:(\d+)\n/.exec(log);
      if (m) {
        proc.stderr!.off('data', seen);
        res(Number(m[1]));
      }
    };
    proc.stderr!.on('data', seen);
    proc.once('exit', (code) => rej(new Error(`${name} exited ${code}: ${log}`)));
  });
  return {
    proc,
    port,
    log: () => log,
    waitLog: (re, deadline = 20_000) => stderrMatch(proc, () => log, re, deadline, name),
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      await once(proc, 'exit');
    },
  };
}

/** Resolve once the text a child wrote to stderr so far (`text()`) matches `re`: checked at each write, with a deadline. */
function stderrMatch(child: ChildProcess, text: () => string, re: RegExp, deadline: number, name: string): Promise<void> {
  return new Promise<void>((res, rej) => {
    const check = () => {
      if (!re.test(text())) return;
      clearTimeout(timer);
      child.stderr!.off('data', check);
      res();
    };
    const timer = setTimeout(() => {
      child.stderr!.off('data', check);
      rej(new Error(`${name}: no ${re} on stderr within ${deadline} ms:\n${text()}`));
    }, deadline);
    child.stderr!.on('data', check);
    check();
  });
}

/** A port that was free a moment ago (for programs that must be told one, such as systemd-socket-activate). */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((res) => s.listen(0, '127.0.0.1', () => res()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((res) => s.close(() => res()));
  return port;
}

export interface Activated {
  port: number;
  child: ChildProcess;
  err(): string;
  /** Wait until its stderr (systemd-socket-activate's and the program's) matches `re` (an event, with a deadline). */
  waitErr(re: RegExp, deadline?: number): Promise<void>;
}

/**
 * Run bin/NAME under the real systemd-socket-activate on a free loopback
 * port (its own flags first: --accept --inetd for inetd mode, none for
 * LISTEN_FDS); resolves once it listens. The caller stops it (SIGTERM).
 */
export async function socketActivate(name: string, activateArgs: string[], args: string[], extraEnv: Record<string, string> = {}): Promise<Activated> {
  const port = await freePort();
  // It passes on only the variables it is told to: IMA_ALLOW_ROOT for a root CI (see testEnv), and the caller's.
  const pass = Object.entries({ IMA_ALLOW_ROOT: '1', ...extraEnv }).map(([k, v]) => `--setenv=${k}=${v}`);
  const child = spawn('systemd-socket-activate', [`--listen=127.0.0.1:${port}`, ...pass, ...activateArgs, join(BIN, name), ...args], {
    env: testEnv(extraEnv),
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  await new Promise<void>((res, rej) => {
    child.stderr!.on('data', (d) => {
      err += d;
      if (/Listening on/.test(err)) res();
    });
    child.on('exit', (c) => rej(new Error(`systemd-socket-activate exited ${c}: ${err}`)));
  });
  return { port, child, err: () => err, waitErr: (re, deadline = 20_000) => stderrMatch(child, () => err, re, deadline, name) };
}

/**
 * Wait until the process in pidFile is gone (or a zombie), for up to
 * `deadline` ms: a SIGKILLed process takes a moment to die on a busy
 * machine, and only /proc can tell for one that is not our child.
 */
export async function processGoneSoon(pidFile: string, deadline = 10_000): Promise<boolean> {
  for (const t0 = Date.now(); !processGone(pidFile);) {
    if (Date.now() - t0 > deadline) return false;
    await new Promise((res) => setTimeout(res, 20));
  }
  return true;
}

/** Is the process of the pid in FILE gone (or a zombie waiting for its reaper)? */
export function processGone(pidFile: string): boolean {
  return pidGone(Number(readFileSync(pidFile, 'utf8')));
}

/** Is this process gone (or a zombie waiting for its reaper)? */
export function pidGone(pid: number): boolean {
  try {
    return /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

/** The pids of a process's children (a server's workers); none once it is gone. */
export function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(' ').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}
