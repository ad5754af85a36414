// The mailbox (ima-message(5), DESIGN.md 4): DIR/{tmp,new,cur}/, each message
// a directory named by the UUID of its message-id. Delivery writes into
// tmp/, fsyncs every file and directory, renames into new/ and fsyncs new/:
// a crash leaves no message or a whole one, never part of one.
import { constants, createReadStream, lstatSync, statSync } from 'node:fs';
import { type FileHandle, lstat, mkdir, open, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { type Address, addressKey, formatAddress, parseAddressList } from './address.js';
import { asFailure, permFail, tempFail } from './failure.js';
import { fsyncDir, uniqueName } from './files.js';
import { DEFAULT_LIMITS, type Headers, type MessageLimits, MessageError, type OutEntry, checkAttachmentName, readMessage } from './message/index.js';

export const FOLDERS = ['tmp', 'new', 'cur'] as const;
/** The folders that hold delivered messages: new/ (not yet seen) and cur/ (seen). */
export type Folder = 'new' | 'cur';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The directory name of a message: the UUID of its message-id. */
export function messageName(headers: Headers): string {
  const id = headers.get('message-id');
  if (!id) throw new MessageError('headers: no message-id (a mailbox stores messages by it)');
  const uuid = id.slice('urn:uuid:'.length).toLowerCase();
  if (!UUID.test(uuid)) throw new MessageError(`headers: message-id "${id}" is not a urn:uuid: URN`);
  return uuid;
}

export function isMessageName(name: string): boolean {
  return UUID.test(name);
}

// Existence checks are synchronous on purpose: a stat of a local directory
// entry takes microseconds, while the promise form costs a thread-pool round
// trip and, for a missing name, an exception with a stack trace.
function isDir(path: string): boolean {
  return lstatSync(path, { throwIfNoEntry: false })?.isDirectory() ?? false;
}

function exists(path: string): boolean {
  return statSync(path, { throwIfNoEntry: false }) !== undefined;
}

/** Make sure DIR is a mailbox; create it (0700, durably) only when asked. */
export async function openMailbox(dir: string, create: boolean): Promise<void> {
  const missing = FOLDERS.filter((f) => !isDir(join(dir, f)));
  if (missing.length === 0) return;
  if (!create) throw tempFail(`mailbox ${dir} does not exist or lacks ${missing.join(', ')}/ (create it, or set create = true)`, '4.2.0');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  for (const f of FOLDERS) await mkdir(join(dir, f), { recursive: true, mode: 0o700 });
  for (const f of FOLDERS) await fsyncDir(join(dir, f));
  await fsyncDir(dir);
  await fsyncDir(join(dir, '..'));
}

/**
 * What one recipient may see of bcc: a bcc recipient only their own address,
 * everyone else (and an unknown recipient) nothing.
 */
export function privateHeaders(headers: Headers, recipient?: Address): Headers {
  const bcc = headers.get('bcc');
  if (bcc === undefined) return headers;
  const h = headers.clone().remove('bcc');
  if (!recipient) return h;
  const mine = parseAddressList(bcc).find((a) => addressKey(a) === addressKey(recipient));
  if (mine) h.set('bcc', formatAddress(mine));
  return h;
}

/** Create a file exclusively and write all of data into it; the caller syncs and closes it. */
async function createAndWrite(path: string, data: Buffer | AsyncIterable<unknown>): Promise<FileHandle> {
  // O_EXCL: never follow or replace an existing name (a planted symlink included).
  const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    if (Buffer.isBuffer(data)) await fh.write(data);
    else for await (const chunk of data) await fh.write(chunk as Buffer);
    return fh;
  } catch (e) {
    await fh.close();
    throw e;
  }
}

async function syncAndClose(fh: FileHandle): Promise<void> {
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Files of one message waiting for their fsync, a few at a time so a message of many entries cannot exhaust descriptors. */
class PendingSyncs {
  private readonly pending: Promise<void>[] = [];
  async add(fh: FileHandle): Promise<void> {
    const sync = syncAndClose(fh);
    // Its failure is reported by all() (or the await below); until then it must not count as unhandled.
    sync.catch(() => {});
    this.pending.push(sync);
    if (this.pending.length >= 8) await this.pending.shift();
  }
  /** Every fsync done; throws the first failure. */
  async all(): Promise<void> {
    const results = await Promise.allSettled(this.pending.splice(0));
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }
}

export interface DeliverOptions {
  limits?: MessageLimits;
  /** The address being delivered to, for bcc privacy. */
  recipient?: Address;
  /** Create a missing mailbox (tmp/ new/ cur/). */
  create?: boolean;
}

export interface Delivered {
  /** The message's directory name (its UUID). */
  id: string;
  /** Already there: stored once, nothing written. */
  duplicate: boolean;
}

/** Store a message durably into a mailbox. Throws a permanent Failure for a bad message, a temporary one for I/O trouble. */
export async function deliverToMailbox(dir: string, input: Readable, opts: DeliverOptions = {}): Promise<Delivered> {
  await openMailbox(dir, opts.create ?? false);
  const work = join(dir, 'tmp', uniqueName());
  let made = false;
  // The fsyncs of a message's files overlap (the file system commits them
  // together instead of one by one); all are done before the rename.
  const syncs = new PendingSyncs();
  try {
    let id: string | undefined;
    let attachmentsDir = false;
    for await (const e of readMessage(input, opts.limits ?? DEFAULT_LIMITS)) {
      if (e.kind === 'headers') {
        id = messageName(e.headers);
        if (exists(join(dir, 'new', id)) || exists(join(dir, 'cur', id))) return { id, duplicate: true };
        await mkdir(work, { mode: 0o700 });
        made = true;
        await syncs.add(await createAndWrite(join(work, 'headers'), privateHeaders(e.headers, opts.recipient).serialize()));
        continue;
      }
      if (e.kind === 'attachment' && !attachmentsDir) {
        await mkdir(join(work, 'attachments'), { mode: 0o700 });
        attachmentsDir = true;
      }
      await syncs.add(await createAndWrite(join(work, e.path), e.stream));
    }
    await syncs.all();
    if (attachmentsDir) await fsyncDir(join(work, 'attachments'));
    await fsyncDir(work);
    try {
      // rename(2) of a directory replaces an empty target silently; ours are never empty (headers).
      await rename(work, join(dir, 'new', id!));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOTEMPTY' || code === 'EEXIST') {
        await rm(work, { recursive: true, force: true });
        return { id: id!, duplicate: true };
      }
      throw e;
    }
    made = false;
    await fsyncDir(join(dir, 'new'));
    return { id: id!, duplicate: false };
  } catch (e) {
    await syncs.all().catch(() => {});
    if (made) await rm(work, { recursive: true, force: true }).catch(() => {});
    if (e instanceof MessageError) throw permFail(e.message, e.status);
    throw asFailure(e, dir);
  }
}

/**
 * Remove what crashed deliveries left in tmp/: entries older than maxAge
 * (ms). A delivery in progress is seconds old, so a generous age never
 * touches one.
 */
export async function cleanTmp(dir: string, maxAge: number, now = Date.now()): Promise<number> {
  let removed = 0;
  let names: string[];
  try {
    names = await readdir(join(dir, 'tmp'));
  } catch {
    return 0;
  }
  for (const name of names) {
    const p = join(dir, 'tmp', name);
    try {
      const st = await lstat(p);
      if (now - st.mtimeMs > maxAge) {
        await rm(p, { recursive: true, force: true });
        removed++;
      }
    } catch {
      // gone meanwhile
    }
  }
  return removed;
}

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

/**
 * A mailbox as its readers see it (post-office): messages found by id, their
 * files listed in canonical order, and moved to cur/ or removed. Ids are
 * checked names, never paths.
 */
export class Mailbox {
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
