// The mailbox (ima-message(5), DESIGN.md 4): DIR/{tmp,new,cur}/, each message
// a directory named by the UUID of its message-id. Delivery writes into
// tmp/, fsyncs every file and directory, renames into new/ and fsyncs new/:
// a crash leaves no message or a whole one, never part of one.
import { lstat, mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { constants } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { type Address, addressKey, formatAddress, parseAddressList } from './address.js';
import { asFailure, permFail, tempFail } from './failure.js';
import { fsyncDir, uniqueName } from './files.js';
import { DEFAULT_LIMITS, type Headers, type MessageLimits, MessageError, readMessage } from './message/index.js';

export const FOLDERS = ['tmp', 'new', 'cur'] as const;
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

async function isDir(path: string): Promise<boolean> {
  try {
    return (await lstat(path)).isDirectory();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

/** Make sure DIR is a mailbox; create it (0700, durably) only when asked. */
export async function openMailbox(dir: string, create: boolean): Promise<void> {
  const missing: string[] = [];
  for (const f of FOLDERS) if (!(await isDir(join(dir, f)))) missing.push(f);
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

async function writeDurably(path: string, data: Buffer | AsyncIterable<unknown>): Promise<void> {
  // O_EXCL: never follow or replace an existing name (a planted symlink included).
  const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    if (Buffer.isBuffer(data)) await fh.write(data);
    else for await (const chunk of data) await fh.write(chunk as Buffer);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
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
  try {
    let id: string | undefined;
    let attachmentsDir = false;
    for await (const e of readMessage(input, opts.limits ?? DEFAULT_LIMITS)) {
      if (e.kind === 'headers') {
        id = messageName(e.headers);
        if ((await exists(join(dir, 'new', id))) || (await exists(join(dir, 'cur', id)))) return { id, duplicate: true };
        await mkdir(work, { mode: 0o700 });
        made = true;
        await writeDurably(join(work, 'headers'), privateHeaders(e.headers, opts.recipient).serialize());
        continue;
      }
      if (e.kind === 'attachment' && !attachmentsDir) {
        await mkdir(join(work, 'attachments'), { mode: 0o700 });
        attachmentsDir = true;
      }
      await writeDurably(join(work, e.path), e.stream);
    }
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

/** Names of the messages in new/ or cur/. */
export async function listFolder(dir: string, folder: 'new' | 'cur'): Promise<string[]> {
  const names = await readdir(join(dir, folder));
  return names.filter(isMessageName).sort();
}
