// Running a stage (a server's handler, a route's command, a legacy
// command): a message on stdin, the stage's stdout lines handed on one by one
// as they are written, its exit code read through the one table (DESIGN.md 2). A toolkit program named as
// the command may run in-process through its main(args, io) (DESIGN.md 7),
// behind a fault barrier: whatever it throws, synchronously or from a timer
// or a promise nobody handled, ends that run as TEMPFAIL (the first fault
// from a timer or a lost promise: every run in flight); the server lives
// on. A spawned stage runs in a process group of its own, so a timeout kills
// whatever it left behind too.
import { AsyncLocalStorage } from 'node:async_hooks';
import type { ChildProcess } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import { join, resolve as resolvePath } from 'node:path';
import { type Readable, Writable } from 'node:stream';
import { EXIT, describe, reportFailure } from './failure.js';
import { oneLine } from './log.js';
import { lineText } from './net/lines.js';
import { isProgram, loadProgram } from './programs/index.js';

export interface StageSpec {
  argv: string[];
  /** Run a toolkit program in this process instead of spawning it. */
  inProcess: boolean;
  env: Record<string, string | undefined>;
  cwd: string;
  input: Readable;
  /** Each stdout line, as it is written. */
  onLine(line: string): void;
  /** Where the handler's stderr goes (the server's log), each line prefixed. */
  stderr: Writable;
  /** ms before the handler is killed (TEMPFAIL). */
  timeout: number;
  /** Abort to stop the handler now (the message turned out bad, the peer left). */
  signal?: AbortSignal;
}

/** Splits what is written (bytes or text) into lines (bounded: an endless line is cut) and hands each on. */
export class LineSplitter extends Writable {
  private partial = '';
  // Made at the first write of bytes: an in-process program writes text, and most runs write one line.
  private decoder: TextDecoder | undefined;
  constructor(
    private readonly each: (line: string) => void,
    private readonly max = 900,
  ) {
    super({ decodeStrings: false });
  }
  override _write(chunk: Buffer | string, _e: BufferEncoding, cb: () => void) {
    const text =
      this.partial + (typeof chunk === 'string' ? this.flushed() + chunk : (this.decoder ??= new TextDecoder('utf-8')).decode(chunk, { stream: true }));
    const lines = text.split('\n');
    this.partial = lines.pop()!;
    for (const l of lines) this.each(lineText(l, this.max));
    if (Buffer.byteLength(this.partial) > this.max) {
      this.each(lineText(this.partial, this.max));
      this.partial = '';
    }
    cb();
  }
  override _final(cb: () => void) {
    const rest = this.partial + this.flushed();
    if (rest !== '') this.each(lineText(rest, this.max));
    cb();
  }
  /** What the decoder still holds of a character cut off by the last bytes written (as U+FFFD). */
  private flushed(): string {
    return this.decoder ? this.decoder.decode() : '';
  }
}

/** Prefixes each line written to it and passes it on (a handler's stderr into the server's log). */
function prefixed(out: Writable, prefix: string): Writable {
  return new LineSplitter((l) => out.writable && out.write(`${prefix}${l}\n`), 2000);
}

/** Run the handler; resolve with its exit code. Killed, crashed or timed out => 75. */
export async function runStage(h: StageSpec): Promise<number> {
  const [cmd, ...args] = h.argv;
  if (h.inProcess && isProgram(cmd)) return runInProcess(h, cmd, args);
  return runSpawned(h, cmd, args);
}

/** An in-process run, as the fault barrier sees it. */
interface InProcessRun {
  /** Started with tracing on: its callbacks and promises carry it (barrier.getStore()). */
  traced: boolean;
  /** A fault raised outside its promise chain (a timer's throw, a rejection nobody handled); `others` runs were in flight with it. */
  fault(err: unknown, others: number): void;
}

// Tracing a fault to the run that raised it takes an AsyncLocalStorage, and
// on Node 20 that means promise hooks: once on, they cost every promise in
// the process (measured: 7% of the in-process chain's user CPU for a 4 KB
// message, 15% of server-receive's CPU for a 1 MiB one). So tracing is off
// until a fault shows there is something to trace. The
// first fault, untraced, ends every untraced run in flight as TEMPFAIL
// (safe: a sender retries, a mailbox stores a retry once); runs started
// after it are traced and a later fault ends only its own run.
const barrier = new AsyncLocalStorage<InProcessRun>();
let tracing = false;
/** Untraced runs whose code may still run: from their start until their main settles. */
const untraced = new Set<InProcessRun>();

/**
 * For the process's 'uncaughtException' and 'unhandledRejection' handlers
 * (run.ts): true when the fault came from an in-process run (or, untraced,
 * may have), which then ends as TEMPFAIL while the process goes on; false
 * when it is the process's own (and the process should die).
 */
export function claimStrayFault(err: unknown): boolean {
  const run = barrier.getStore();
  if (run) {
    run.fault(err, 0);
    return true;
  }
  if (untraced.size === 0) return false;
  tracing = true;
  const suspects = [...untraced];
  for (const r of suspects) r.fault(err, suspects.length - 1);
  return true;
}

async function runInProcess(h: StageSpec, name: string & Parameters<typeof loadProgram>[0], args: string[]): Promise<number> {
  const stdout = new LineSplitter(h.onLine);
  // A program still writing after its run ended (timed out, faulted) writes into nothing.
  stdout.on('error', () => {});
  const stderr = prefixed(h.stderr, `${name}: `);
  stderr.on('error', () => {});
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(new Error('handler timeout')), h.timeout);
  const stop = () => ac.abort(h.signal?.reason);
  h.signal?.addEventListener('abort', stop, { once: true });
  let ended = false;
  const run: InProcessRun = {
    traced: tracing,
    fault(err, others) {
      const whose = others ? ` (one of ${others + 1} in-process runs in flight when it was raised, not traced; later faults are traced to their run)` : '';
      h.stderr.write(`${name}: internal error${ended ? ' after the run ended' : ', run ended TEMPFAIL'}${whose}: ${oneLine(describe(err))}\n`);
      if (!ended) ac.abort(err);
    },
  };
  const io = { stdin: h.input, stdout, stderr, env: h.env, cwd: h.cwd, signal: ac.signal };
  const aborted = new Promise<number>((res) => ac.signal.addEventListener('abort', () => res(EXIT.TEMPFAIL), { once: true }));
  // Stderr lines of reportFailure carry the program name already; the prefix is for the server log.
  let code: number;
  let running: Promise<number> | undefined;
  try {
    const main = mains.get(name) ?? (await loadMain(name));
    running = run.traced ? barrier.run(run, () => main(args, io)) : untracedRun(run, () => main(args, io));
    running.catch(() => {}); // a rejection after an abort is the run's own business
    code = await Promise.race([running, aborted]);
  } catch (e) {
    code = reportFailure(io, name, e);
  } finally {
    ended = true;
    clearTimeout(timer);
    h.signal?.removeEventListener('abort', stop);
  }
  // Aborted: the program may still be reading; its input goes away so it stops (io.signal says why).
  if (ac.signal.aborted) {
    h.input.destroy();
    // A moment to undo what it began (a half-written message in tmp/) before the answer goes out; one that ignores its signal is not waited for longer.
    if (running) await settledWithin(running, ABORT_GRACE);
  }
  await new Promise<void>((res) => stdout.end(res));
  stderr.end();
  if (!h.input.readableEnded && !h.input.destroyed) h.input.resume();
  return ac.signal.aborted ? EXIT.TEMPFAIL : code;
}

/** Run main as an untraced run: a suspect for any stray fault until its promise settles. */
function untracedRun(run: InProcessRun, main: () => Promise<number>): Promise<number> {
  untraced.add(run);
  const running = main();
  const gone = () => untraced.delete(run);
  running.then(gone, gone);
  return running;
}

// A program's main, once loaded: a dynamic import() resolves and links the module again on every call.
const mains = new Map<string, Awaited<ReturnType<typeof loadProgram>>>();

async function loadMain(name: Parameters<typeof loadProgram>[0]) {
  const main = await loadProgram(name);
  mains.set(name, main);
  return main;
}

/** How long an aborted in-process run may take to clean up after itself before its TEMPFAIL is answered. */
const ABORT_GRACE = 1000;

/** Resolves when p settles or after ms, whichever comes first. */
function settledWithin(p: Promise<unknown>, ms: number): Promise<void> {
  return new Promise((res) => {
    const t = setTimeout(res, ms);
    const done = () => {
      clearTimeout(t);
      res();
    };
    p.then(done, done);
  });
}

/** How long a stage that has exited may leave something of its own holding its pipes. */
const LEFTOVER_GRACE = 1000;

/** SIGKILL a stage's whole process group: the stage and whatever it started. */
function killGroup(child: ChildProcess): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    // The group is gone already.
  }
}

function runSpawned(h: StageSpec, cmd: string, args: string[]): Promise<number> {
  return new Promise((resolve) => {
    // detached: the stage leads a process group of its own (sh -c 'sleep 60 & ...' included), so a kill reaches all of it.
    // node:child_process at the first spawn: a run whose stages all run in-process does not load it.
    const child = process
      .getBuiltinModule('node:child_process')
      .spawn(cmd, args, { env: h.env as NodeJS.ProcessEnv, cwd: h.cwd, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    const stdout = new LineSplitter(h.onLine);
    child.stdout.pipe(stdout);
    child.stderr.pipe(prefixed(h.stderr, `${cmd}: `));
    child.stdin.on('error', () => {}); // a handler may exit without reading everything
    h.input.on('error', () => child.stdin.destroy());
    h.input.pipe(child.stdin);
    let killed = false;
    const kill = () => {
      killed = true;
      killGroup(child);
    };
    const timer = setTimeout(kill, h.timeout);
    h.signal?.addEventListener('abort', kill, { once: true });
    // The stage said its word; something it left running must not hold the pipes (and us) for long.
    let leftovers: NodeJS.Timeout | undefined;
    child.on('exit', () => {
      leftovers = setTimeout(() => killGroup(child), LEFTOVER_GRACE);
    });
    let spawnError: Error | undefined;
    child.on('error', (e) => {
      spawnError = e;
      h.stderr.write(`handler ${cmd}: ${e.message}\n`);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      clearTimeout(leftovers);
      h.signal?.removeEventListener('abort', kill);
      h.input.unpipe(child.stdin);
      if (!h.input.readableEnded) h.input.resume();
      stdout.end(() => resolve(killed || spawnError || code === null ? EXIT.TEMPFAIL : code));
    });
  });
}

/**
 * Why a configured command could not run, or undefined when it can: a toolkit
 * program, an executable path, or a name found on PATH. Checked at config
 * time so a typo is a refused start, not a TEMPFAIL for every message.
 */
export function commandProblem(argv: readonly string[], env: Record<string, string | undefined>, cwd: string): string | undefined {
  const cmd = argv[0];
  if (cmd === undefined || cmd === '') return 'is empty';
  if (isProgram(cmd)) return undefined;
  if (cmd.includes('/')) return executable(resolvePath(cwd, cmd)) ? undefined : `${cmd}: no such executable file`;
  const dirs = (env.PATH ?? '').split(':').filter((d) => d !== '');
  return dirs.some((d) => executable(join(resolvePath(cwd, d), cmd))) ? undefined : `${cmd}: not found on PATH`;
}

function executable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return statSync(file).isFile();
  } catch {
    return false;
  }
}
