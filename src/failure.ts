import type { Writable } from 'node:stream';
import { type LogFormat, logLine } from './log.js';

// The one catalog of named failures and the one exit-code table.
// Every program throws these; only run.ts turns them into exit codes, and
// only the delivery stages turn them into OK/FAIL/TEMPFAIL lines.

/** Exit codes. 0-3 are the delivery contract (DESIGN.md 2); the rest are sysexits(3). */
export const EXIT = {
  OK: 0,
  FAIL: 1, // no recipient OK, all permanent
  PARTIAL: 2, // some OK, some not
  DROP: 3, // drop the connection now
  USAGE: 64, // EX_USAGE: bad command line
  DATAERR: 65, // EX_DATAERR: bad input data
  NOINPUT: 66, // EX_NOINPUT: an input file cannot be opened
  SOFTWARE: 70, // EX_SOFTWARE: internal error
  CANTCREAT: 73, // EX_CANTCREAT: an output file cannot be created
  TEMPFAIL: 75, // EX_TEMPFAIL: try again later
  NOPERM: 77, // EX_NOPERM
  CONFIG: 78, // EX_CONFIG: bad configuration
} as const;

export type Kind = 'temporary' | 'permanent' | 'usage' | 'data' | 'config' | 'noinput' | 'cantcreat' | 'noperm';

const EXIT_FOR_KIND: Record<Kind, number> = {
  temporary: EXIT.TEMPFAIL,
  permanent: EXIT.FAIL,
  usage: EXIT.USAGE,
  data: EXIT.DATAERR,
  config: EXIT.CONFIG,
  noinput: EXIT.NOINPUT,
  cantcreat: EXIT.CANTCREAT,
  noperm: EXIT.NOPERM,
};

/** A failure whose reason is fit to show a user, with its kind deciding the exit code. */
export class Failure extends Error {
  readonly kind: Kind;
  /** RFC 3463 enhanced status code, for the SMTP bridge and protocol replies. */
  readonly status: string;
  constructor(kind: Kind, reason: string, status?: string) {
    super(reason);
    this.name = 'Failure';
    this.kind = kind;
    this.status = status ?? (kind === 'temporary' ? '4.0.0' : '5.0.0');
  }
  get exitCode(): number {
    return EXIT_FOR_KIND[this.kind];
  }
  get temporary(): boolean {
    return this.kind === 'temporary';
  }
}

export const tempFail = (reason: string, status?: string) => new Failure('temporary', reason, status);
export const permFail = (reason: string, status?: string) => new Failure('permanent', reason, status);
export const usageError = (reason: string) => new Failure('usage', reason);
export const dataError = (reason: string) => new Failure('data', reason);
export const configError = (file: string, key: string, problem: string) => new Failure('config', `${file}: ${key ? key + ': ' : ''}${problem}`);
export const noInput = (file: string, problem: string) => new Failure('noinput', `${file}: ${problem}`);
export const cantCreate = (file: string, problem: string) => new Failure('cantcreat', `${file}: ${problem}`);
export const notPermitted = (reason: string) => new Failure('noperm', reason);

/** errno codes that mean "the machine is in trouble now", not "this input is bad". */
const TEMPORARY_ERRNO = new Set([
  'ENOSPC',
  'EDQUOT',
  'EIO',
  'EROFS',
  'EACCES',
  'EPERM',
  'EMFILE',
  'ENFILE',
  'ENOMEM',
  'EAGAIN',
  'EBUSY',
  'ETIMEDOUT',
  'ECONNRESET',
  'ECONNREFUSED',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
]);

/** Turn any thrown value into a Failure. Unknown errors are temporary: a retry is cheaper than lost mail. */
export function asFailure(err: unknown, context?: string): Failure {
  if (err instanceof Failure) return err;
  const e = err as NodeJS.ErrnoException;
  const where = context ? `${context}: ` : '';
  const what = e?.code ? `${e.code}${e.syscall ? ` (${e.syscall})` : ''}` : String(e?.message ?? err);
  if (e?.code === 'ENOSPC' || e?.code === 'EDQUOT') return tempFail(`${where}${what}: no space left`, '4.3.1');
  if (e?.code && TEMPORARY_ERRNO.has(e.code)) return tempFail(`${where}${what}`, '4.3.0');
  return tempFail(`${where}${e?.message ?? String(err)}`, '4.3.0');
}

/** Short message of an error for a log line. */
export function describe(err: unknown): string {
  if (err instanceof Failure) return err.message;
  const e = err as NodeJS.ErrnoException;
  return e?.message ?? String(err);
}

/** Write "program: reason" (or its JSON record) for a failure and return its exit code; unknown errors are temporary. */
export function reportFailure(io: { stderr: Writable }, program: string, err: unknown, format: LogFormat = 'text'): number {
  const f = asFailure(err);
  const internal = !(err instanceof Failure) && !(err as NodeJS.ErrnoException)?.code;
  io.stderr.write(logLine(program, 'error', `${internal ? 'internal error: ' : ''}${f.message}`, format));
  return f.exitCode;
}
