// IMRP, the retrieval protocol (ima(7)): the wire format both sides share.
// A message is sent as "MESSAGE <id> <size>" and then exactly <size> bytes
// of the canonical tar, written on the fly from the message directory
// (server.ts); the client is client.ts.
import { type Folder, isMessageName } from '../mailbox.js';
import { lineText } from '../net/lines.js';

export const IMRP_PORT = 4691;
export const VERSION = '1';
export const MAX_LINE = 1000;

// ---- lines a client sends ------------------------------------------------

export type Command =
  | { verb: 'LOGIN'; user: string; password?: string }
  | { verb: 'FOLDERS' }
  | { verb: 'LIST'; folder: Folder | 'all' }
  | { verb: 'FETCH'; id: string | 'NEW' }
  | { verb: 'SEEN' | 'DELETE'; ids: string[] }
  | { verb: 'QUIT' };

export class ProtocolError extends Error {}

const USER = /^[A-Za-z0-9._@+-]{1,64}$/;

/** Why a name cannot be a user in LOGIN (ima(7) user), for config checks on both sides; undefined if it can. */
export function userNameProblem(name: string): string | undefined {
  return USER.test(name) ? undefined : 'user names are 1 to 64 of A-Z a-z 0-9 . _ @ + -';
}

function ids(words: string[], verb: string): string[] {
  if (words.length === 0 || words.length > 1000) throw new ProtocolError(`${verb} takes 1 to 1000 message ids`);
  for (const w of words) if (!isMessageName(w)) throw new ProtocolError(`${verb}: "${lineText(w, 60)}" is not a message id`);
  return words;
}

/** Parse a client line strictly; a bad line is a ProtocolError naming the problem. */
export function parseCommand(line: string): Command {
  const sp = line.indexOf(' ');
  const verb = sp === -1 ? line : line.slice(0, sp);
  const rest = sp === -1 ? '' : line.slice(sp + 1);
  const words = rest === '' ? [] : rest.split(' ');
  switch (verb) {
    case 'LOGIN': {
      const user = words[0] ?? '';
      if (!USER.test(user)) throw new ProtocolError('LOGIN <user> [<password>]');
      const password = sp === -1 ? undefined : rest.slice(user.length + 1);
      return { verb, user, password: password === '' || password === undefined ? undefined : password };
    }
    case 'FOLDERS':
    case 'QUIT':
      if (words.length) throw new ProtocolError(`${verb} takes no arguments`);
      return { verb };
    case 'LIST': {
      const folder = words[0] ?? 'all';
      if (words.length > 1 || !['new', 'cur', 'all'].includes(folder)) throw new ProtocolError('LIST [new|cur|all]');
      return { verb, folder: folder as Folder | 'all' };
    }
    case 'FETCH':
      if (words.length !== 1) throw new ProtocolError('FETCH <id>|NEW');
      return { verb, id: words[0] === 'NEW' ? 'NEW' : ids(words, 'FETCH')[0] };
    case 'SEEN':
    case 'DELETE':
      return { verb, ids: ids(words, verb) };
    default:
      throw new ProtocolError(`unknown command "${lineText(verb, 40)}"`);
  }
}

// ---- lines a server sends ------------------------------------------------

export const greeting = (name: string) => `IMRP ${VERSION} ${name}\n`;
export const ok = (text = '') => (text ? `OK ${lineText(text)}\n` : 'OK\n');
export const no = (text: string) => `NO ${lineText(text)}\n`;
export const error = (text: string) => `ERROR ${lineText(text)}\n`;
export const bye = (text: string) => `BYE ${lineText(text)}\n`;

export interface Summary {
  id: string;
  folder: Folder;
  /** Bytes of content (entry data), not of the tar. */
  size: number;
  date: string;
  from: string;
  subject: string;
}

/** "MSG id new|seen size date from subject..." with from a bare address and subject last. */
export const msgLine = (s: Summary) =>
  `MSG ${s.id} ${s.folder === 'new' ? 'new' : 'seen'} ${s.size} ${s.date || '-'} ${s.from || '-'} ${lineText(s.subject, 400)}`.trimEnd() + '\n';

export function parseMsgLine(line: string): Summary | undefined {
  const m = /^MSG ([0-9a-f-]{36}) (new|seen) (\d{1,15}) (\S+) (\S+) ?(.*)$/.exec(line);
  if (!m || !isMessageName(m[1])) return undefined;
  return {
    id: m[1],
    folder: m[2] === 'new' ? 'new' : 'cur',
    size: Number(m[3]),
    date: m[4] === '-' ? '' : m[4],
    from: m[5] === '-' ? '' : m[5],
    subject: m[6],
  };
}
