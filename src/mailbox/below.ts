// Opening what lies below a mailbox without ever following a link there.
// A user may plant symbolic links in their own mailbox (an `attachments`
// that points into another user's), or swap one in between a check and an
// open: every component below the mailbox is opened with O_NOFOLLOW, each
// relative to its parent's descriptor, and what is opened is checked by
// fstat of the descriptor, never by a second look at the path.
// fs.promises: loaded at first use (see ../mailbox.ts).
import { constants, existsSync, promises as fsp, lstatSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';

const { O_RDONLY, O_DIRECTORY, O_NOFOLLOW, O_NONBLOCK } = constants;

/**
 * Node has no openat(2); on Linux /proc/self/fd/N names the directory open
 * as N itself (not its path), so NAME below it is looked up in that very
 * directory. Elsewhere each component is opened by path, O_NOFOLLOW still.
 */
const FD_DIR = process.platform === 'linux' && existsSync('/proc/self/fd') ? '/proc/self/fd' : undefined;

/** A link, a device, a FIFO or anything else that is not what was expected below a mailbox. */
export class NotPlainError extends Error {
  readonly code = 'ENOTPLAIN';
}

const CHUNK = 256 * 1024;

function explain(names: readonly string[], e: unknown): unknown {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ELOOP' || code === 'ENOTDIR') return new NotPlainError(`${names.join('/')}: a symbolic link or not a plain file or directory (refused)`);
  return e;
}

/**
 * Open root/names[0]/names[1]/... where every name is one component (no
 * "/"). The root itself may be a link (the mailbox an operator configured);
 * nothing below it may. `kind` is what the last component must be; the
 * descriptor returned is checked to be a regular file or a directory.
 */
export async function openBelow(root: string, names: readonly string[], kind: 'file' | 'dir'): Promise<{ fh: FileHandle; size: number }> {
  let fh = await fsp.open(root, O_RDONLY | O_DIRECTORY);
  try {
    for (const [i, name] of names.entries()) {
      if (name === '' || name === '.' || name === '..' || name.includes('/')) throw new NotPlainError(`${names.join('/')}: not a plain name`);
      const dir = i < names.length - 1 || kind === 'dir';
      // O_NONBLOCK: opening a FIFO planted in place of a file must not hang; the fstat below refuses it.
      const flags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | (dir ? O_DIRECTORY : 0);
      let next: FileHandle;
      try {
        next = await fsp.open(FD_DIR ? `${FD_DIR}/${fh.fd}/${name}` : join(root, ...names.slice(0, i + 1)), flags);
      } catch (e) {
        throw explain(names, e);
      }
      await fh.close();
      fh = next;
    }
    const st = await fh.stat();
    if (kind === 'file' ? !st.isFile() : !st.isDirectory())
      throw new NotPlainError(`${names.join('/')}: not a regular ${kind === 'file' ? 'file' : 'directory'}`);
    return { fh, size: st.size };
  } catch (e) {
    await fh.close();
    throw e;
  }
}

/** The names in the directory root/names..., listed through its descriptor. */
export async function listBelow(root: string, names: readonly string[]): Promise<string[]> {
  const { fh } = await openBelow(root, names, 'dir');
  try {
    return await fsp.readdir(FD_DIR ? `${FD_DIR}/${fh.fd}` : join(root, ...names));
  } finally {
    await fh.close();
  }
}

/**
 * A stream of the regular file root/names..., opened (safely) only when first
 * read, closed at its end or destruction. It is read up to the size it had
 * when opened (a delivered message's files never change), each read into a
 * buffer of what is left or CHUNK: a buffer of CHUNK for the last few bytes
 * and one more for the read that finds the end made post-office allocate
 * 1.75 MB per 1 MiB message, headers file included.
 */
export function streamBelow(root: string, names: readonly string[]): Readable {
  let fh: FileHandle | undefined;
  let left = 0;
  return new Readable({
    highWaterMark: CHUNK,
    construct(cb) {
      openBelow(root, names, 'file').then(
        (o) => {
          fh = o.fh;
          left = o.size;
          cb();
        },
        (e: Error) => cb(e),
      );
    },
    read() {
      if (left <= 0) return void this.push(null);
      const len = Math.min(CHUNK, left);
      fh!.read(Buffer.allocUnsafe(len), 0, len, null).then(
        ({ bytesRead, buffer }) => {
          left -= bytesRead;
          this.push(bytesRead ? buffer.subarray(0, bytesRead) : null);
        },
        (e: Error) => this.destroy(e),
      );
    },
    destroy(err, cb) {
      const closing = fh ? fh.close() : Promise.resolve();
      fh = undefined;
      closing.then(
        () => cb(err),
        () => cb(err),
      );
    },
  });
}

/** The whole of a regular file below root (small files: headers, a prefetched message). */
export async function readBelow(root: string, names: readonly string[]): Promise<Buffer> {
  const { fh } = await openBelow(root, names, 'file');
  try {
    return await fh.readFile();
  } finally {
    await fh.close();
  }
}

/**
 * A folder of a mailbox held open for renames in and out of it. On Linux a
 * name is reached through the descriptor (/proc/self/fd/N/NAME, as renameat(2)
 * would), so a folder swapped for a link after it was opened is not followed;
 * elsewhere the folder is checked to be a plain directory right before each
 * rename by path.
 */
export class HeldFolder {
  private constructor(
    private readonly root: string,
    private readonly names: readonly string[],
    private readonly fh: FileHandle,
  ) {}

  /** Open root/names... as openBelow does: a link or non-directory anywhere below root is refused (NotPlainError). */
  static async open(root: string, names: readonly string[]): Promise<HeldFolder> {
    return new HeldFolder(root, names, (await openBelow(root, names, 'dir')).fh);
  }

  /** The path by which NAME in this folder is renamed. */
  path(name: string): string {
    if (FD_DIR) return `${FD_DIR}/${this.fh.fd}/${name}`;
    for (let i = 1; i <= this.names.length; i++)
      if (!lstatSync(join(this.root, ...this.names.slice(0, i))).isDirectory())
        throw new NotPlainError(`${this.names.join('/')}: a symbolic link or not a plain directory (refused)`);
    return join(this.root, ...this.names, name);
  }

  /** Is NAME in this folder (whatever it is)? */
  has(name: string): boolean {
    return lstatSync(this.path(name), { throwIfNoEntry: false }) !== undefined;
  }

  /** Make the renames in and out of this folder durable. */
  sync(): Promise<void> {
    return this.fh.sync();
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

/** Rename NAME in one held folder to TO in another; false when NAME is gone already. */
export async function renameHeld(from: HeldFolder, name: string, to: HeldFolder, toName: string): Promise<boolean> {
  try {
    await fsp.rename(from.path(name), to.path(toName));
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}
