// The program contract (DESIGN.md 2): a program is main(args, io) -> exit
// code. Io carries everything a program may touch of the outside world, so
// the same main runs as a process (run.ts), in-process inside a server
// (stage.ts), or under a test with in-memory streams.
import type { Readable, Writable } from 'node:stream';

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
