// Durable file operations: what "durably stored" means on a POSIX file
// system. fsync of a file does not persist its directory entry, so every
// create and rename is followed by an fsync of the directory.
// fs.promises: loaded at first use (see mailbox.ts).
import { closeSync, constants, createWriteStream, promises as fsp, fsync, openSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { cantCreate } from './failure.js';

/** fsync a directory so the entries created or renamed in it survive a crash. */
export function fsyncDir(dir: string): Promise<void> {
  return groupCommit(dir);
}

async function fsyncDirNow(dir: string): Promise<void> {
  // open(2) and close(2) of a local directory take microseconds: done
  // directly, only the fsync (which waits for the disk) goes to the thread pool.
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fsyncFd(fd);
  } finally {
    closeSync(fd);
  }
}

/** fsync(2) of an open descriptor, in the thread pool (it waits for the disk). */
export function fsyncFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fsync(fd, (e) => (e ? reject(e) : resolve())));
}

/**
 * Group commit: concurrent deliveries into one folder share fsyncs. A caller
 * needs an fsync that starts after its own change; while one is running,
 * every newcomer waits for the single next one, which covers them all.
 */
const dirSyncs = new Map<string, { running: Promise<void>; next?: Promise<void> }>();

function groupCommit(dir: string): Promise<void> {
  const state = dirSyncs.get(dir);
  if (state) return (state.next ??= state.running.catch(() => {}).then(() => startSync(dir)));
  return startSync(dir);
}

function startSync(dir: string): Promise<void> {
  const state: { running: Promise<void>; next?: Promise<void> } = { running: fsyncDirNow(dir) };
  dirSyncs.set(dir, state);
  // Forgotten once done, unless someone already waits for the next one.
  void state.running
    .catch(() => {})
    .then(() => {
      if (dirSyncs.get(dir) === state && !state.next) dirSyncs.delete(dir);
    });
  return state.running;
}

// Randomness drawn once per process, then counted on: a name per delivered
// message, and randomBytes costs more than the rest of making one. Drawn at
// the first name, not at load: node:crypto takes over a millisecond to load,
// which a run that names nothing (give-recipient --clean) need not pay.
let salt: string | undefined;
let named = 0;

/** A name no other writer will pick: time, pid, this process's randomness and a count. */
export function uniqueName(prefix = ''): string {
  salt ??= process.getBuiltinModule('node:crypto').randomBytes(6).toString('hex');
  return `${prefix}${Date.now()}.${process.pid}.${salt}${(++named).toString(36)}`;
}

/**
 * Create `path` exclusively, fill it with `write`, fsync and close it. On
 * any failure the file is removed. `label` names the file in an error.
 */
export async function writeSynced(path: string, write: (out: Writable) => Promise<void>, mode = 0o644, label = path): Promise<void> {
  let fh;
  try {
    fh = await fsp.open(path, 'wx', mode);
  } catch (e) {
    throw cantCreate(label, `cannot create (${(e as NodeJS.ErrnoException).code})`);
  }
  let out: Writable | undefined;
  try {
    out = createWriteStream('', { fd: fh.fd, autoClose: false });
    await write(out);
    // The writer may only have called end(): the bytes must be written before fsync and close.
    await finished(out);
    await fh.sync();
    await fh.close();
    fh = undefined;
  } catch (e) {
    // A write still in flight must finish before its descriptor is closed.
    if (out && !out.closed) await finished(out.destroy()).catch(() => {});
    await fh?.close().catch(() => {});
    await fsp.unlink(path).catch(() => {});
    throw e;
  }
}

/**
 * Write a file so that it either appears whole or not at all: a temporary
 * file beside it (created exclusively), fsync, rename over the target, fsync
 * of the directory. On any failure the temporary file is removed.
 */
export async function writeFileAtomic(path: string, write: (out: Writable) => Promise<void>, mode = 0o644): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${uniqueName()}.tmp`);
  await writeSynced(tmp, write, mode, path);
  try {
    await fsp.rename(tmp, path);
    await fsyncDir(dir);
  } catch (e) {
    await fsp.unlink(tmp).catch(() => {});
    throw e;
  }
}
