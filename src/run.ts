// The runner: the only place that touches `process`. A program is
// main(args, io) -> exit code; bin/NAME calls launch(), a server calls main()
// directly to run a toolkit program in-process (DESIGN.md 7).
import type { Readable, Writable } from 'node:stream';
import { EXIT, Failure, asFailure } from './failure.js';
import { oneLine } from './log.js';
import { type ProgramName, loadProgram } from './programs/index.js';

export interface Io {
  stdin: Readable;
  stdout: Writable;
  stderr: Writable;
  env: Record<string, string | undefined>;
  /** Directory relative paths are resolved against. */
  cwd: string;
  /** Aborted when the caller wants the program to stop (a timeout, a shutdown). */
  signal?: AbortSignal;
  /** Where a long-running server hears SIGTERM, SIGINT and SIGHUP: the process, or nothing in-process. */
  signals?: NodeJS.EventEmitter;
}

export type Main = (args: string[], io: Io) => Promise<number>;

/** The Io of the real process. */
export function processIo(): Io {
  return { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr, env: process.env, cwd: process.cwd(), signals: process };
}

/** Write "program: reason" for a failure and return its exit code; unknown errors are temporary. */
export function reportFailure(io: Io, program: string, err: unknown): number {
  const f = asFailure(err);
  const internal = !(err instanceof Failure) && !(err as NodeJS.ErrnoException)?.code;
  io.stderr.write(`${program}: ${internal ? 'internal error: ' : ''}${oneLine(f.message)}\n`);
  return f.exitCode;
}

/** Run a toolkit program as this process, with the exit code semantics of DESIGN.md 2. */
export function launch(program: ProgramName): void {
  const io = processIo();
  // A closed stdout (| head) is the reader's choice, not our failure.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') throw e;
  });
  loadProgram(program).then((main) => main(process.argv.slice(2), io)).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      process.exitCode = reportFailure(io, program, err);
    },
  );
  process.on('uncaughtException', (err) => {
    reportFailure(io, program, err);
    process.exit(EXIT.TEMPFAIL);
  });
}
