// IMDP, the server-to-server delivery protocol (ima(7)): the wire words and
// the strict parsers and formatters of its lines. The client is client.ts,
// the server session server.ts, send-mail's domain logic send.ts.
import { lineText } from '../net/lines.js';

export { lineText };

/** The port IMDP servers listen on when nothing else is said (config table, SRV record). */
export const IMDP_PORT = 4690;
export const VERSION = '1';
/** Longest control line either side sends, LF excluded. */
export const MAX_LINE = 1000;

/** Final statuses and the exit codes of the handler they come from (DESIGN.md 2). */
export const FINAL = ['OK', 'FAIL', 'PARTIAL', 'TEMPFAIL'] as const;
export type Final = (typeof FINAL)[number];

// ---- lines a client sends ------------------------------------------------

export type Command =
  { verb: 'MAIL'; size: number } | { verb: 'DATA' } | { verb: 'ABORT' } | { verb: 'DONE' } | { verb: 'bad'; reason: string; mail?: boolean };

// At most 15 digits (ima(7)'s grammar): every such number is exact in a double, so no size is rounded.
const SIZE = /^(0|[1-9]\d{0,14})$/;

/** Parse one client control line strictly: exact verbs, single spaces, decimal sizes. */
export function parseCommand(line: string): Command {
  const sp = line.indexOf(' ');
  const verb = sp === -1 ? line : line.slice(0, sp);
  const arg = sp === -1 ? undefined : line.slice(sp + 1);
  switch (verb) {
    case 'MAIL':
      if (arg === undefined || !SIZE.test(arg)) {
        return { verb: 'bad', reason: 'MAIL needs the message size in bytes, at most 15 digits: MAIL <size>', mail: true };
      }
      return { verb: 'MAIL', size: Number(arg) };
    case 'DATA':
    case 'ABORT':
    case 'DONE':
      return arg === undefined ? { verb } : { verb: 'bad', reason: `${verb} takes no argument` };
    default:
      return { verb: 'bad', reason: `unknown command ${JSON.stringify(lineText(verb, 40))}: expected MAIL, DATA, ABORT or DONE` };
  }
}

// ---- lines a server sends -------------------------------------------------

export const greeting = (domain: string) => `IMDP ${VERSION} ${domain}\n`;
export const reply = (text: string) => `REPLY ${lineText(text)}\n`;
export const accept = () => 'ACCEPT\n';
/** REJECT with an RFC 3463 status: 4.x.x is temporary, 5.x.x permanent. */
export const reject = (status: string, text: string) => `REJECT ${status} ${lineText(text)}\n`;
export const final = (word: Final, text?: string) => (text ? `${word} ${lineText(text)}\n` : `${word}\n`);
export const error = (text: string) => `ERROR ${lineText(text)}\n`;
export const bye = (text: string) => `BYE ${lineText(text)}\n`;

export interface Answer {
  /** ACCEPT, REJECT, OK, FAIL, PARTIAL, TEMPFAIL, ERROR or BYE. */
  word: string;
  /** For REJECT, the status (4.x.x or 5.x.x). */
  status?: string;
  text: string;
  /** REPLY lines that came before it, in order. */
  replies: string[];
}

/** Is this answer a temporary refusal (retry later) rather than a permanent one? */
export function isTemporary(a: Answer): boolean {
  if (a.word === 'REJECT') return a.status?.startsWith('4') ?? true;
  return a.word !== 'FAIL' && a.word !== 'OK' && a.word !== 'PARTIAL';
}
