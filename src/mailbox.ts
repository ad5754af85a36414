// The mailbox (ima-message(5), DESIGN.md 4): DIR/{tmp,new,cur}/, each message
// a directory named by the UUID of its message-id. Delivery writes into
// tmp/, fsyncs every file and directory, renames into new/ and fsyncs new/:
// a crash leaves no message or a whole one, never part of one.
// fs.promises, not node:fs/promises: node:fs loads it at first use (about a
// millisecond of a spawned stage's start, which a --check need not pay).
import { closeSync, constants, promises as fsp, linkSync, lstatSync, mkdirSync, openSync, readdirSync, renameSync, writeSync, writev } from 'node:fs';
import { isAbsolute, join, relative, sep } from 'node:path';
import type { Readable } from 'node:stream';
import { type Address, addressKey, formatAddress, parseAddressList } from './address.js';
import { asFailure, permFail, tempFail } from './failure.js';
import { fsyncDir, fsyncFd, uniqueName } from './files.js';
import { HeldFolder, NotPlainError, listBelow, openBelow, readBelow, renameHeld, streamBelow } from './mailbox/below.js';
import { ContentDigest, LEGACY_DIGEST_FILE, conflictName, digestFileName, digestInNames } from './mailbox/digest.js';
import {
  DEFAULT_LIMITS,
  type Headers,
  type MessageLimits,
  MessageError,
  type OutEntry,
  checkAttachmentName,
  readMessage,
  withoutBlindCopies,
} from './message/index.js';

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

/**
 * A folder that is there but is not a real directory: a symbolic link (which
 * would take deliveries, or the clean-up of tmp/, to wherever it points) or
 * a file. Temporary: the mail waits while an operator looks.
 */
const NOT_A_FOLDER = (path: string) =>
  tempFail(`${path}: not a directory (a symbolic link or other file in place of a mailbox folder; refused, an operator must look)`, '4.2.0');

// Existence checks are synchronous on purpose: a stat of a local directory
// entry takes microseconds, while the promise form costs a thread-pool round
// trip and, for a missing name, an exception with a stack trace.
/** Whether the mailbox folder at path is there: a real directory, never a link to one (lstat); anything else is refused. */
function isFolder(path: string): boolean {
  const st = lstatSync(path, { throwIfNoEntry: false });
  if (st === undefined) return false;
  if (!st.isDirectory()) throw NOT_A_FOLDER(path);
  return true;
}

/** Make a missing folder; one made by someone else meanwhile is checked like any other. */
async function makeFolder(path: string): Promise<void> {
  try {
    await fsp.mkdir(path, { mode: 0o700 });
  } catch (e) {
    // Not recursive: mkdir -p would accept a link to a directory without a word.
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    if (!isFolder(path)) throw e;
  }
}

/** Make sure DIR is a mailbox; create it (0700, durably) only when asked. tmp/, new/ and cur/ must be real directories. */
export async function openMailbox(dir: string, create: boolean): Promise<void> {
  const missing = FOLDERS.filter((f) => !isFolder(join(dir, f)));
  if (missing.length === 0) return;
  if (!create) throw tempFail(`mailbox ${dir} does not exist or lacks ${missing.join(', ')}/ (create it, or set create = true)`, '4.2.0');
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  for (const f of missing) await makeFolder(join(dir, f));
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
  if (bcc === undefined) return withoutBlindCopies(headers);
  const h = withoutBlindCopies(headers).clone();
  const mine = recipient && parseAddressList(bcc).find((a) => addressKey(a) === addressKey(recipient));
  // set() replaces the value where the field stands: field order is kept (ima-message(5)), and so are the stored bytes around it.
  return mine ? h.set('bcc', formatAddress(mine)) : h.remove('bcc');
}

// Delivery makes a few small files per message. Only fsync(2) waits for the
// disk: it goes to the thread pool. open(2), mkdir(2), rename(2), close(2)
// and the first bytes written to each file (page cache, microseconds) are
// made directly; each trip through the thread pool costs more than the call
// itself (a handful of futex and epoll calls, a promise). Writes past
// SMALL_FILE go to the thread pool, so a big message cannot hold up the
// process's other work while the kernel throttles its writes; they are
// gathered into one writev(2) of up to GATHER bytes, written while the next
// are read: a chunk off a TLS socket is 16 KiB, and a trip per chunk made
// the writes of a 1 MiB message the largest part of the main thread's work.
const SMALL_FILE = 64 * 1024;
const GATHER = 128 * 1024;

const NO_PROGRESS = () => tempFail(`cannot write: no byte written (disk full or a file size limit)`, '4.3.1');

/**
 * writev(2) may write less than asked (a file size limit, a full disk): go on
 * with the rest until all is written or the system says why it cannot.
 */
async function writevAll(fd: number, chunks: Buffer[]): Promise<void> {
  let rest = chunks;
  while (rest.length > 0) {
    const n = await new Promise<number>((res, rej) => writev(fd, rest, (e, written) => (e ? rej(e) : res(written))));
    if (n === 0) throw NO_PROGRESS();
    rest = afterBytes(rest, n);
  }
}

/** What is left of chunks once the first n bytes are gone. */
function afterBytes(chunks: Buffer[], n: number): Buffer[] {
  let i = 0;
  for (; i < chunks.length && n >= chunks[i].length; i++) n -= chunks[i].length;
  const rest = chunks.slice(i);
  if (n > 0) rest[0] = rest[0].subarray(n);
  return rest;
}

function writeAllSync(fd: number, data: Buffer): void {
  for (let off = 0; off < data.length;) {
    const n = writeSync(fd, data, off, data.length - off);
    if (n === 0) throw NO_PROGRESS();
    off += n;
  }
}

/** Create a file exclusively and write all of data into it; its descriptor, which the caller syncs and closes. */
async function createAndWrite(path: string, data: Buffer | AsyncIterable<unknown>): Promise<number> {
  // O_EXCL: never follow or replace an existing name (a planted symlink included).
  const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  let writing: Promise<void> = Promise.resolve();
  try {
    let written = 0;
    let gathered: Buffer[] = [];
    let gatheredBytes = 0;
    // One writev in flight while reading goes on; the next waits for it.
    const flush = async () => {
      await writing;
      const data = gathered;
      gathered = [];
      gatheredBytes = 0;
      writing = writevAll(fd, data);
      writing.catch(() => {}); // awaited below; this only keeps a failure from counting as unhandled meanwhile
    };
    for await (const c of Buffer.isBuffer(data) ? [data] : data) {
      const chunk = c as Buffer;
      if (written + chunk.length <= SMALL_FILE) writeAllSync(fd, chunk);
      else {
        gathered.push(chunk);
        gatheredBytes += chunk.length;
        if (gatheredBytes >= GATHER) await flush();
      }
      written += chunk.length;
    }
    if (gatheredBytes > 0) await flush();
    await writing;
    return fd;
  } catch (e) {
    // A write still in flight must finish before its descriptor is closed.
    await writing.catch(() => {});
    closeQuietly(fd);
    throw e;
  }
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // Its error says nothing more than the one being reported.
  }
}

async function syncAndClose(fd: number): Promise<void> {
  try {
    await fsyncFd(fd);
  } finally {
    closeSync(fd);
  }
}

/** Wait for every one of them, then throw the first failure: nothing may still run when the caller cleans up. */
async function allDone(work: Promise<void>[]): Promise<void> {
  const failed = (await Promise.allSettled(work)).find((r) => r.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;
}

/** Files of one message waiting for their fsync, a few at a time so a message of many entries cannot exhaust descriptors. */
class PendingSyncs {
  private readonly pending: Promise<void>[] = [];
  async add(fd: number): Promise<void> {
    const sync = syncAndClose(fd);
    // Its failure is reported by all() (or the await below); until then it must not count as unhandled.
    sync.catch(() => {});
    this.pending.push(sync);
    if (this.pending.length >= 8) await this.pending.shift();
  }
  /** Every fsync done; throws the first failure. */
  async all(): Promise<void> {
    await allDone(this.pending.splice(0));
  }
}

export interface DeliverOptions {
  limits?: MessageLimits;
  /** The address being delivered to, for bcc privacy. */
  recipient?: Address;
  /** Create a missing mailbox (tmp/ new/ cur/). */
  create?: boolean;
  /** Keep the headers as they come, bcc included (fetch-mail: the server already kept bcc private to this user). */
  headersAsSent?: boolean;
  /** The name a sender gave the message (fetch-mail: the server's id): refused before it is stored unless it is this message's. */
  expectName?: string;
}

export interface Delivered {
  /** The message's directory name: the UUID of its message-id, or its conflict name. */
  id: string;
  /** The UUID of its message-id. */
  messageId: string;
  /** Already there with the same content: stored once, nothing more kept. */
  duplicate: boolean;
  /** Its message-id was taken by other content: stored under a name of its own. */
  conflict: boolean;
}

/** Store a message durably into a mailbox. Throws a permanent Failure for a bad message, a temporary one for I/O trouble. */
export async function deliverToMailbox(dir: string, input: Readable, opts: DeliverOptions = {}): Promise<Delivered> {
  await openMailbox(dir, opts.create ?? false);
  const work = join(dir, 'tmp', uniqueName());
  let made = false;
  // The fsyncs of a message's files overlap (the file system commits them
  // together instead of one by one); all are done before the rename.
  const syncs = new PendingSyncs();
  // Not synced until the digest's link to it is made (below).
  let headersFd: number | undefined;
  try {
    const digest = new ContentDigest();
    let id: string | undefined;
    let attachmentsDir = false;
    // Written whole into tmp/ even when the id is stored already: only the whole content tells a retry from another message.
    for await (const e of readMessage(input, opts.limits ?? DEFAULT_LIMITS)) {
      if (e.kind === 'headers') {
        id = messageName(e.headers);
        digest.headers(e.headers);
        mkdirSync(work, { mode: 0o700 });
        made = true;
        const kept = opts.headersAsSent ? e.headers : privateHeaders(e.headers, opts.recipient);
        const raw = kept.serialize();
        headersFd = await createAndWrite(join(work, 'headers'), raw);
        continue;
      }
      if (e.kind === 'attachment' && !attachmentsDir) {
        mkdirSync(join(work, 'attachments'), { mode: 0o700 });
        attachmentsDir = true;
      }
      const data = e.data ? digest.bytes(e.path, e.data) : digest.entry(e.path, e.stream);
      await syncs.add(await createAndWrite(join(work, e.path), data));
    }
    const sum = digest.finish();
    if (opts.expectName !== undefined && opts.expectName !== id && opts.expectName !== conflictName(id!, sum))
      throw new MessageError(`message ${id} was sent as ${opts.expectName}`);
    // The digest is a second name of the headers file, not a file of its
    // own: a name costs no inode, and allocating inodes is most of what
    // creating a file costs (ext4 without a journal scans past recently
    // deleted ones). The headers' fsync comes after the link, so it also
    // persists the inode's link count.
    linkSync(join(work, 'headers'), join(work, digestFileName(sum)));
    const headersSynced = syncAndClose(headersFd!);
    headersFd = undefined;
    // Every name is made now, so the directories' fsyncs run beside the
    // files' instead of after them: each makes only its own part durable,
    // and the rename into new/ waits for all of them. One wait for the disk
    // before the rename instead of two (or three).
    await allDone([headersSynced, syncs.all(), ...(attachmentsDir ? [fsyncDir(join(work, 'attachments'))] : []), fsyncDir(work)]);
    const placed = await place(dir, work, id!, sum);
    made = false;
    return { ...placed, messageId: id! };
  } catch (e) {
    if (headersFd !== undefined) closeQuietly(headersFd);
    await syncs.all().catch(() => {});
    if (made) await fsp.rm(work, { recursive: true, force: true }).catch(() => {});
    if (e instanceof MessageError) throw permFail(e.message, e.status);
    throw asFailure(e, dir);
  }
}

/** What storedDigest says of a name that holds something other than a message with a digest: never the same as any message. */
const OTHER_CONTENT = 'none';

/**
 * The digest of the message stored under name in folder; OTHER_CONTENT for
 * one stored without a digest, or for a link, a FIFO or anything else that
 * is not a plain message directory; undefined when the name is free. Read
 * through below.ts: a link is never followed (its target is no message to
 * readers) and a FIFO never opened for reading (which would wait forever).
 */
async function storedDigest(dir: string, folder: Folder, name: string): Promise<string | undefined> {
  // Every delivery asks about cur/: a free name, the usual answer, costs one lstat, not the careful read below.
  if (lstatSync(join(dir, folder, name), { throwIfNoEntry: false }) === undefined) return undefined;
  const notThere = (e: unknown, none: string | undefined) => {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return none;
    if (e instanceof NotPlainError) return OTHER_CONTENT;
    throw e;
  };
  let names: string[];
  try {
    names = await listBelow(dir, [folder, name]);
  } catch (e) {
    return notThere(e, undefined);
  }
  const named = digestInNames(names);
  if (named) return named;
  try {
    return (await readBelow(dir, [folder, name, LEGACY_DIGEST_FILE])).toString('utf8').trim();
  } catch (e) {
    return notThere(e, OTHER_CONTENT);
  }
}

/** rename(2) of the written message to new/NAME; false when NAME is taken there. */
function renamedInto(work: string, target: string): boolean {
  try {
    // rename(2) of a directory replaces an empty target silently; ours are never empty (headers).
    renameSync(work, target);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    // ENOTDIR: the name is a link, a FIFO or a file, which storedDigest calls other content.
    if (code === 'ENOTEMPTY' || code === 'EEXIST' || code === 'ENOTDIR') return false;
    throw e;
  }
}

/**
 * Move a written message from tmp/ into new/: under its id, or, when the id
 * holds other content, under its conflict name; the same content already
 * there makes it a duplicate. A stored copy without a digest (written before
 * digests were kept, possibly cut short) is never taken for the same.
 */
async function place(dir: string, work: string, id: string, sum: string): Promise<Omit<Delivered, 'messageId'>> {
  for (const name of [id, undefined]) {
    const as = name ?? conflictName(id, sum);
    // Twice: a delivery of the same id may rename into new/ between our look and our rename.
    for (let attempt = 0; attempt < 2; attempt++) {
      // A name taken in new/ makes the rename fail, so only cur/ needs a look first.
      let there = await storedDigest(dir, 'cur', as);
      if (there === undefined) {
        if (renamedInto(work, join(dir, 'new', as))) {
          await fsyncDir(join(dir, 'new'));
          return { id: as, duplicate: false, conflict: as !== id };
        }
        there = await storedDigest(dir, 'new', as);
        // Gone again meanwhile (read and removed): try once more.
        if (there === undefined) continue;
      }
      if (there === sum) {
        await fsp.rm(work, { recursive: true, force: true });
        return { id: as, duplicate: true, conflict: as !== id };
      }
      break;
    }
  }
  throw tempFail(`message-id ${id}: both its name and its conflict name ${conflictName(id, sum)} hold other content`, '4.2.0');
}

/**
 * Remove what crashed deliveries left in tmp/: entries older than maxAge
 * (ms). A delivery in progress is seconds old, so a generous age never
 * touches one.
 */
export async function cleanTmp(dir: string, maxAge: number, now = Date.now()): Promise<number> {
  let removed = 0;
  let names: string[];
  // A tmp/ that is a link would have the clean-up remove old files wherever it points.
  if (!isFolder(join(dir, 'tmp'))) return 0;
  // Listed and looked at directly, as delivery makes its own few calls: tmp/
  // holds the deliveries in progress and what crashes left. The thread pool
  // and fs.promises (each costs a process about a millisecond at its first
  // use, which `give-recipient --clean` from cron paid just to list a
  // directory) only for a removal.
  try {
    names = readdirSync(join(dir, 'tmp'));
  } catch {
    return 0;
  }
  for (const name of names) {
    const p = join(dir, 'tmp', name);
    try {
      const st = lstatSync(p, { throwIfNoEntry: false });
      if (st && now - st.mtimeMs > maxAge) {
        await fsp.rm(p, { recursive: true, force: true });
        removed++;
      }
    } catch {
      // gone meanwhile
    }
  }
  return removed;
}

/**
 * A mailbox as its readers see it (post-office): messages found by id, their
 * files listed in canonical order, and moved to cur/ or removed. Ids are
 * checked names, never paths.
 */
export class Mailbox {
  constructor(readonly dir: string) {}

  /**
   * Where a message is, or undefined: the id is checked before it touches a
   * path, and a link in place of the message or its folder is not a message.
   */
  async locate(id: string): Promise<{ folder: Folder; path: string } | undefined> {
    if (!isMessageName(id)) return undefined;
    for (const folder of ['new', 'cur'] as const) {
      try {
        const { fh } = await openBelow(this.dir, [folder, id], 'dir');
        await fh.close();
        return { folder, path: join(this.dir, folder, id) };
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT' && !(e instanceof NotPlainError)) throw e;
      }
    }
    return undefined;
  }

  /** The message ids in a folder; a folder that is a link is refused (NotPlainError). */
  async ids(folder: Folder): Promise<string[]> {
    try {
      return (await listBelow(this.dir, [folder])).filter(isMessageName).sort();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
  }

  /** The components of a path inside this mailbox. */
  private below(path: string, ...more: string[]): string[] {
    const rel = relative(this.dir, path);
    if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) throw new NotPlainError(`${path}: not inside the mailbox ${this.dir}`);
    return [...rel.split(sep), ...more];
  }

  /**
   * The entries of a stored message, in canonical order, regular files only.
   * Nothing below the mailbox is followed if it is a link, now or when an
   * entry is opened later (each open() walks down again with O_NOFOLLOW).
   */
  async entries(path: string): Promise<OutEntry[]> {
    const file = async (p: string): Promise<OutEntry | undefined> => {
      const names = this.below(path, ...p.split('/'));
      let size: number;
      try {
        const o = await openBelow(this.dir, names, 'file');
        size = o.size;
        await o.fh.close();
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
        throw e;
      }
      return { path: p, size, open: () => streamBelow(this.dir, names) };
    };
    const listAttachments = () =>
      listBelow(this.dir, this.below(path, 'attachments')).catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return [] as string[];
        throw e;
      });
    const [texts, names] = await Promise.all([Promise.all(['headers', 'body', 'body.html'].map((p) => file(p))), listAttachments()]);
    const out = texts.filter((e): e is OutEntry => e !== undefined);
    if (out[0]?.path !== 'headers') throw new Error('message without headers');
    const sorted = names.map((x) => checkAttachmentName(x)).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    for (const e of await Promise.all(sorted.map((n) => file(`attachments/${n}`)))) if (e) out.push(e);
    return out;
  }

  /** The whole of one file of a stored message (entry path such as "headers"), read without following links. */
  async readEntry(path: string, entry: string): Promise<Buffer> {
    return readBelow(this.dir, this.below(path, ...entry.split('/')));
  }

  /**
   * Move the messages in new/ to cur/ (seen), durably: every rename first,
   * then one fsync per folder for the whole batch. Returns how many of ids
   * are seen now, whichever session moved them. The folders are renamed in
   * through their descriptors: a new/ or cur/ that is a link (into another
   * user's mailbox) is refused, NotPlainError, and nothing moves.
   */
  async markSeen(ids: string[]): Promise<number> {
    const found = await this.locateAll(ids);
    const fresh = found.filter((at) => at.folder === 'new');
    let n = found.length - fresh.length;
    if (fresh.length === 0) return n;
    await this.withFolders('new', 'cur', async (from, to) => {
      // Moved by another session of the same user meanwhile: seen all the same.
      for (const at of fresh) if ((await renameHeld(from, at.id, to, at.id)) || to.has(at.id)) n++;
      await Promise.all([to.sync(), from.sync()]);
    });
    return n;
  }

  /**
   * Remove messages: each renamed out of sight into tmp/ (atomic), one fsync
   * per folder for the batch, and only then their files removed. Returns
   * how many are gone; a crash leaves renamed ones for tmp/'s clean-up. A
   * folder that is a link is refused (NotPlainError), as for markSeen.
   */
  async remove(ids: string[]): Promise<number> {
    const found = await this.locateAll(ids);
    let n = 0;
    for (const folder of ['new', 'cur'] as const) {
      const here = found.filter((at) => at.folder === folder);
      if (here.length === 0) continue;
      await this.withFolders(folder, 'tmp', async (from, tmp) => {
        const gone: string[] = [];
        for (const at of here) {
          const name = `deleted.${at.id}.${process.pid}.${Date.now()}`;
          if (await renameHeld(from, at.id, tmp, name)) gone.push(name);
        }
        await from.sync();
        await Promise.all(gone.map((g) => fsp.rm(tmp.path(g), { recursive: true, force: true })));
        n += gone.length;
      });
    }
    return n;
  }

  /** Run act with two folders of this mailbox held open (see HeldFolder), closed after. */
  private async withFolders(a: Folder | 'tmp', b: Folder | 'tmp', act: (a: HeldFolder, b: HeldFolder) => Promise<void>): Promise<void> {
    const from = await HeldFolder.open(this.dir, [a]);
    try {
      const to = await HeldFolder.open(this.dir, [b]);
      try {
        await act(from, to);
      } finally {
        await to.close();
      }
    } finally {
      await from.close();
    }
  }

  /** The messages among ids that exist here, each once. */
  private async locateAll(ids: string[]): Promise<{ id: string; folder: Folder; path: string }[]> {
    const unique = [...new Set(ids)];
    const at = await Promise.all(unique.map((id) => this.locate(id)));
    return unique.flatMap((id, i) => (at[i] ? [{ id, ...at[i] }] : []));
  }
}
