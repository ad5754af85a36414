// The result vocabulary of the delivery stages (DESIGN.md 2), in one place:
// one line per recipient on stdout, and the exit code a set of them makes.
//
//   OK <address>
//   FAIL <address> <reason>          permanent: do not retry
//   TEMPFAIL <address> <reason>      temporary: retry later
//   NORECIPIENT <address>            no such local recipient (permanent)
import { EXIT } from './failure.js';

export const WORDS = ['OK', 'FAIL', 'TEMPFAIL', 'NORECIPIENT'] as const;
export type Word = (typeof WORDS)[number];

export interface Result {
  word: Word;
  /** The address as the stage wrote it ("-" when the line is about the whole message). */
  address: string;
  /** Empty for OK and NORECIPIENT; for failures, usually "X.Y.Z text" (RFC 3463). */
  reason: string;
}

const LINE = /^(OK|FAIL|TEMPFAIL|NORECIPIENT) (\S+)(?: (.*))?$/;

/** A result line, or undefined when the line is something else (stages may print other lines). */
export function parseResult(line: string): Result | undefined {
  const m = LINE.exec(line);
  return m ? { word: m[1] as Word, address: m[2], reason: m[3] ?? '' } : undefined;
}

/** The line for a result; the reason is kept on one line. */
export function formatResult(r: Result): string {
  const reason = r.reason.replace(/[\x00-\x1f\x7f]+/g, ' ').trim();
  return reason ? `${r.word} ${r.address} ${reason}` : `${r.word} ${r.address}`;
}

/** Is this word one that must not be retried? */
export const isPermanent = (w: Word) => w === 'FAIL' || w === 'NORECIPIENT';

/** The exit code for a set of recipient results: 0 all OK, 2 some OK, 75 none OK and one temporary, else 1. */
export function exitFor(words: readonly Word[]): number {
  const ok = words.filter((w) => w === 'OK').length;
  if (words.length && ok === words.length) return EXIT.OK;
  if (ok > 0) return EXIT.PARTIAL;
  return words.includes('TEMPFAIL') ? EXIT.TEMPFAIL : EXIT.FAIL;
}

/** The final status a server answers for a stage's exit code; 'drop' closes the connection. Unknown codes are temporary. */
export function finalFor(code: number): 'OK' | 'FAIL' | 'PARTIAL' | 'TEMPFAIL' | 'drop' {
  switch (code) {
    case EXIT.OK:
      return 'OK';
    case EXIT.FAIL:
      return 'FAIL';
    case EXIT.PARTIAL:
      return 'PARTIAL';
    case EXIT.DROP:
      return 'drop';
    default:
      return 'TEMPFAIL';
  }
}
