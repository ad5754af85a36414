// IMRP, the retrieval protocol (ima(7)): the wire format both sides share,
// and the server's view of a mailbox. A message is sent as
// "MESSAGE <id> <size>" and then exactly <size> bytes of the canonical tar,
// written on the fly from the message directory.
import { lstat, readFile, readdir, rename, rm } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { parseAddress } from './address.js';
import { fsyncDir } from './files.js';
import { isMessageName } from './mailbox.js';
import { lineText } from './imdp.js';
import { type OutEntry, checkAttachmentName, mtimeOf, parseHeaders, writeEntries } from './message/index.js';

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

export type Folder = 'new' | 'cur';

export class ProtocolError extends Error {}

const USER = /^[A-Za-z0-9._@+-]{1,64}$/;

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
export const msgLine = (s: Summary) => `MSG ${s.id} ${s.folder === 'new' ? 'new' : 'seen'} ${s.size} ${s.date || '-'} ${s.from || '-'} ${lineText(s.subject, 400)}`.trimEnd() + '\n';

export function parseMsgLine(line: string): Summary | undefined {
  const m = /^MSG ([0-9a-f-]{36}) (new|seen) (\d{1,15}) (\S+) (\S+) ?(.*)$/.exec(line);
  if (!m || !isMessageName(m[1])) return undefined;
  return { id: m[1], folder: m[2] === 'new' ? 'new' : 'cur', size: Number(m[3]), date: m[4] === '-' ? '' : m[4], from: m[5] === '-' ? '' : m[5], subject: m[6] };
}

// ---- the server's view of one mailbox ------------------------------------------

/** rename(2), false when the source is gone (another session of the same user moved it first). */
async function moved(from: string, to: string): Promise<boolean> {
  try {
    await rename(from, to);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

/** A mailbox seen through IMRP: ids are checked names, never paths. */
export class MailboxView {
  constructor(readonly dir: string) {}

  /** Where a message is, or undefined: the id is checked before it touches a path. */
  async locate(id: string): Promise<{ folder: Folder; path: string } | undefined> {
    if (!isMessageName(id)) return undefined;
    for (const folder of ['new', 'cur'] as const) {
      const path = join(this.dir, folder, id);
      try {
        if ((await lstat(path)).isDirectory()) return { folder, path };
      } catch {
        // not in this folder
      }
    }
    return undefined;
  }

  async ids(folder: Folder): Promise<string[]> {
    try {
      return (await readdir(join(this.dir, folder))).filter(isMessageName).sort();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
  }

  /** The entries of a stored message, in canonical order, regular files only. */
  async entries(path: string): Promise<OutEntry[]> {
    const file = async (p: string, name: string): Promise<OutEntry | undefined> => {
      let st;
      try {
        st = await lstat(join(path, p));
      } catch {
        return undefined;
      }
      if (!st.isFile()) throw new Error(`${name}: not a regular file`);
      return { path: p, size: st.size, open: () => createReadStream(join(path, p), { highWaterMark: 256 * 1024 }) };
    };
    const listAttachments = () => readdir(join(path, 'attachments')).catch(() => [] as string[]);
    const [texts, names] = await Promise.all([Promise.all(['headers', 'body', 'body.html'].map((p) => file(p, p))), listAttachments()]);
    const out = texts.filter((e): e is OutEntry => e !== undefined);
    if (out[0]?.path !== 'headers') throw new Error('message without headers');
    const sorted = names.map((x) => checkAttachmentName(x)).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    for (const e of await Promise.all(sorted.map((n) => file(`attachments/${n}`, n)))) if (e) out.push(e);
    return out;
  }

  async summary(id: string, folder: Folder): Promise<Summary> {
    const path = join(this.dir, folder, id);
    const entries = await this.entries(path);
    const h = parseHeaders(await readFile(join(path, 'headers')));
    let from = '';
    try {
      const a = parseAddress(h.get('from') ?? '');
      from = `${a.local}@${a.domain}`;
    } catch {
      // no usable from
    }
    return { id, folder, size: entries.reduce((n, e) => n + e.size, 0), date: h.get('date') ?? '', from, subject: h.get('subject') ?? '' };
  }

  /** The exact size of the tar a message's entries make: the header blocks of a data-less copy, plus the padded data. */
  static async tarSize(entries: OutEntry[], mtime: Date): Promise<number> {
    const skeleton = entries.map((e) => ({ path: e.path, size: 0, open: () => Buffer.alloc(0) }));
    const sink = new PassThrough();
    let n = 0;
    sink.on('data', (c: Buffer) => (n += c.length));
    await writeEntries(sink, skeleton, mtime);
    return n + entries.reduce((t, e) => t + Math.ceil(e.size / 512) * 512, 0);
  }

  static async mtime(path: string): Promise<Date> {
    return mtimeOf(parseHeaders(await readFile(join(path, 'headers'))));
  }

  /**
   * Move the messages in new/ to cur/ (seen), durably: every rename first,
   * then one fsync per folder for the whole batch. Returns how many are seen.
   */
  async markSeen(ids: string[]): Promise<number> {
    const found = await this.locateAll(ids);
    let n = 0;
    for (const at of found) if (at.folder === 'cur' || (await moved(at.path, join(this.dir, 'cur', at.id)))) n++;
    if (found.some((at) => at.folder === 'new')) await Promise.all([fsyncDir(join(this.dir, 'cur')), fsyncDir(join(this.dir, 'new'))]);
    return n;
  }

  /**
   * Remove messages: each renamed out of sight into tmp/ (atomic), one fsync
   * per folder for the batch, and only then their files removed. Returns
   * how many are gone; a crash leaves renamed ones for tmp/'s clean-up.
   */
  async remove(ids: string[]): Promise<number> {
    const found = await this.locateAll(ids);
    const gone: string[] = [];
    for (const at of found) {
      const to = join(this.dir, 'tmp', `deleted.${at.id}.${process.pid}.${Date.now()}`);
      if (await moved(at.path, to)) gone.push(to);
    }
    await Promise.all([...new Set(found.map((at) => at.folder))].map((f) => fsyncDir(join(this.dir, f))));
    await Promise.all(gone.map((g) => rm(g, { recursive: true, force: true })));
    return gone.length;
  }

  /** The messages among ids that exist here, each once. */
  private async locateAll(ids: string[]): Promise<{ id: string; folder: Folder; path: string }[]> {
    const unique = [...new Set(ids)];
    const at = await Promise.all(unique.map((id) => this.locate(id)));
    return unique.flatMap((id, i) => (at[i] ? [{ id, ...at[i] }] : []));
  }
}
