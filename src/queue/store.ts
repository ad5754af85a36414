// Where the queue lives. The programs use the QueueStore interface only, so
// a second backend (PostgreSQL, DESIGN.md 9) can come without touching them;
// this one is a directory anyone can read with ls, cat and tar:
//
//   QUEUE_DIR/messages/ID.ima     the message, canonical, as queue-mail stored it
//   QUEUE_DIR/messages/ID.state   its state (JSON, see state.ts), rewritten atomically
//   QUEUE_DIR/tmp/                queue-mail's files being written
//   QUEUE_DIR/control/            operators' requests for a running run-queue
//   QUEUE_DIR/run-queue.pid       the lock: one run-queue (or operation) at a time
//
// A message exists once its .ima is in messages/: queue-mail renames the
// state in first, the message last; removal unlinks the message first.
import { randomBytes } from 'node:crypto';
import { createReadStream, watch, type FSWatcher } from 'node:fs';
import { link, mkdir, readFile, readdir, rename, stat, unlink } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { tempFail } from '../failure.js';
import { fsyncDir, uniqueName, writeFileAtomic, writeSynced } from '../files.js';
import { type MessageState, parseState, serializeState } from './state.js';

/** A queue id: arrival time (UTC, to the second) and randomness, sortable by arrival. */
const ID = /^\d{8}T\d{6}-[0-9a-f]{10}$/;
export const isQueueId = (s: string) => ID.test(s);

export function newQueueId(now = Date.now()): string {
  const t = new Date(now).toISOString().replace(/[-:]/g, '').slice(0, 15);
  return `${t}-${randomBytes(5).toString('hex')}`;
}

export interface QueueStore {
  /** Store a new message: `write` fills it and answers its size; `state` makes its state from that. Durable when it resolves. */
  add(id: string, write: (out: Writable) => Promise<void>, state: (size: number) => MessageState): Promise<void>;
  ids(): Promise<string[]>;
  /** The state, or undefined when the message is gone. A state that cannot be read is an error naming the file. */
  readState(id: string): Promise<MessageState | undefined>;
  writeState(s: MessageState): Promise<void>;
  openMessage(id: string): Readable;
  /** Remove a message and its state. */
  remove(id: string): Promise<void>;
  /** Be the only one changing states; throws a temporary failure naming the holder. */
  lock(): Promise<() => Promise<void>>;
  /** The pid holding the lock, if it is alive. */
  lockHolder(): Promise<number | undefined>;
  /** Leave a request for whoever holds the lock; answers a name to wait on. */
  request(line: string): Promise<string>;
  /** Requests waiting, oldest first; each is removed after `apply`. */
  takeRequests(apply: (line: string) => Promise<void>): Promise<void>;
  requestPending(name: string): Promise<boolean>;
  /** Call `onChange` when messages arrive or requests are left. */
  watch(onChange: (what: 'messages' | 'control') => void): () => void;
  /** Remove leftovers of crashed writers older than `age` ms. */
  clean(age: number): Promise<number>;
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
};

export class DirQueue implements QueueStore {
  readonly messages: string;
  readonly tmp: string;
  readonly control: string;
  readonly pidFile: string;
  constructor(readonly dir: string) {
    this.messages = join(dir, 'messages');
    this.tmp = join(dir, 'tmp');
    this.control = join(dir, 'control');
    this.pidFile = join(dir, 'run-queue.pid');
  }

  /** Create the directories (mode 0700: mail is private). */
  async init(): Promise<this> {
    for (const d of [this.messages, this.tmp, this.control]) await mkdir(d, { recursive: true, mode: 0o700 });
    return this;
  }

  private file = (id: string, ext: 'ima' | 'state') => join(this.messages, `${id}.${ext}`);

  async add(id: string, write: (out: Writable) => Promise<void>, state: (size: number) => MessageState): Promise<void> {
    const tmpMsg = join(this.tmp, `${id}.ima`);
    const tmpState = join(this.tmp, `${id}.state`);
    try {
      await writeSynced(tmpMsg, write, 0o600);
      const { size } = await stat(tmpMsg);
      await writeSynced(tmpState, async (out) => void out.end(serializeState(state(size))), 0o600);
      await rename(tmpState, this.file(id, 'state'));
      await rename(tmpMsg, this.file(id, 'ima'));
      await fsyncDir(this.messages);
    } catch (e) {
      await Promise.all([tmpMsg, tmpState, this.file(id, 'state')].map((f) => unlink(f).catch(() => {})));
      throw e;
    }
  }

  async ids(): Promise<string[]> {
    const names = await readdir(this.messages);
    return names
      .filter((n) => n.endsWith('.ima'))
      .map((n) => n.slice(0, -4))
      .filter(isQueueId)
      .sort();
  }

  async readState(id: string): Promise<MessageState | undefined> {
    const f = this.file(id, 'state');
    let text: string;
    try {
      text = await readFile(f, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    try {
      return parseState(text);
    } catch (e) {
      throw tempFail(`${f}: unreadable state: ${(e as Error).message}`);
    }
  }

  writeState(s: MessageState): Promise<void> {
    return writeFileAtomic(this.file(s.id, 'state'), async (out) => void out.end(serializeState(s)), 0o600);
  }

  openMessage(id: string): Readable {
    return createReadStream(this.file(id, 'ima'), { highWaterMark: 256 * 1024 });
  }

  async remove(id: string): Promise<void> {
    await unlink(this.file(id, 'ima')).catch(ignoreMissing);
    await unlink(this.file(id, 'state')).catch(ignoreMissing);
    await fsyncDir(this.messages);
  }

  async lock(): Promise<() => Promise<void>> {
    if (process.platform !== 'linux') return this.lockByLink();
    // The kernel holds the lock, not a file: an abstract socket named by the
    // queue directory's device and inode is bound by one process at a time
    // and released when that process ends, however it ends. A pid file's
    // takeover after a crash cannot be made atomic (two could each find the
    // dead pid, and the second removed the first's new lock).
    const name = await this.lockName();
    const server = createServer();
    try {
      await new Promise<void>((res, rej) => {
        server.once('error', rej);
        server.listen({ path: `\0${name}`, exclusive: true }, res);
      });
    } catch (e) {
      server.close();
      if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw e;
      const holder = await this.lockHolder();
      throw tempFail(`${this.pidFile}: run-queue is running${holder === undefined ? '' : ` (pid ${holder})`}`);
    }
    server.unref(); // the lock must not keep the process alive
    try {
      // The pid, for list-queue's SIGHUP; it replaces a dead holder's at once.
      await writeFileAtomic(this.pidFile, async (out) => void out.end(`${process.pid}\n`), 0o644);
    } catch (e) {
      server.close();
      throw e;
    }
    return async () => {
      // The pid file goes first: the next holder's must not be removed.
      await unlink(this.pidFile).catch(() => {});
      await new Promise<void>((res) => server.close(() => res()));
    };
  }

  /** Elsewhere than Linux (no abstract sockets): link(2) of a file holding our pid; a dead holder's is taken over, not atomically. */
  private async lockByLink(): Promise<() => Promise<void>> {
    const mine = join(this.tmp, `lock.${uniqueName()}`);
    await writeSynced(mine, async (out) => void out.end(`${process.pid}\n`), 0o644);
    try {
      for (let tries = 0; tries < 3; tries++) {
        try {
          await link(mine, this.pidFile);
          return async () => void (await unlink(this.pidFile).catch(() => {}));
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        }
        const holder = await this.lockHolder();
        if (holder !== undefined) throw tempFail(`${this.pidFile}: run-queue is running (pid ${holder})`);
        await unlink(this.pidFile).catch(() => {}); // a dead holder's
      }
      throw tempFail(`${this.pidFile}: cannot take the lock`);
    } finally {
      await unlink(mine).catch(() => {});
    }
  }

  /** The lock's abstract socket name (without its leading NUL). */
  private async lockName(): Promise<string> {
    const { dev, ino } = await stat(this.dir, { bigint: true });
    return `ima-queue:${dev}:${ino}`;
  }

  async lockHolder(): Promise<number | undefined> {
    // The pid file alone may name a crashed holder's pid, reused since by an
    // unrelated process (which list-queue would then signal), or this very
    // process (PID 1 again in a restarted container).
    if (process.platform === 'linux' && !(await this.lockTaken())) return undefined;
    const pid = Number((await readFile(this.pidFile, 'utf8').catch(() => '')).trim());
    return Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid && alive(pid) ? pid : undefined;
  }

  /**
   * Whether a process holds the lock now: its socket is bound.
   * /proc/net/unix shows an abstract name with each NUL as @, and Node binds
   * it padded with NULs to the whole sun_path.
   */
  private async lockTaken(): Promise<boolean> {
    const wanted = `@${await this.lockName()}`;
    const table = await readFile('/proc/net/unix', 'latin1');
    return table.split('\n').some((line) => line.slice(line.lastIndexOf(' ') + 1).replace(/@+$/, '') === wanted);
  }

  async request(line: string): Promise<string> {
    const name = uniqueName();
    await writeFileAtomic(join(this.control, name), async (out) => void out.end(`${line}\n`), 0o600);
    return name;
  }

  async takeRequests(apply: (line: string) => Promise<void>): Promise<void> {
    const names = (await readdir(this.control)).filter((n) => !n.startsWith('.')).sort();
    for (const n of names) {
      const f = join(this.control, n);
      const text = await readFile(f, 'utf8').catch(() => undefined);
      if (text === undefined) continue;
      for (const line of text.split('\n')) if (line.trim()) await apply(line.trim());
      await unlink(f).catch(() => {});
    }
  }

  async requestPending(name: string): Promise<boolean> {
    return (await stat(join(this.control, name)).catch(() => undefined)) !== undefined;
  }

  watch(onChange: (what: 'messages' | 'control') => void): () => void {
    const watchers: FSWatcher[] = [];
    for (const [d, what] of [
      [this.messages, 'messages'],
      [this.control, 'control'],
    ] as const) {
      const w = watch(d, (_e, name) => {
        if (what === 'control' || String(name).endsWith('.ima')) onChange(what);
      });
      w.on('error', () => {}); // the periodic scan still finds everything
      watchers.push(w);
    }
    return () => watchers.forEach((w) => w.close());
  }

  async clean(age: number): Promise<number> {
    const now = Date.now();
    let n = 0;
    const old = async (f: string) => ((await stat(f).catch(() => undefined))?.mtimeMs ?? now) < now - age;
    for (const name of await readdir(this.tmp)) {
      if (await old(join(this.tmp, name)))
        n += await unlink(join(this.tmp, name)).then(
          () => 1,
          () => 0,
        );
    }
    // A state without its message: queue-mail crashed between its renames, or a removal between its unlinks.
    const names = new Set(await readdir(this.messages));
    for (const name of names) {
      const f = join(this.messages, name);
      if (name.endsWith('.state') && !names.has(`${name.slice(0, -6)}.ima`) && (await old(f)))
        n += await unlink(f).then(
          () => 1,
          () => 0,
        );
      if (name.startsWith('.') && name.endsWith('.tmp') && (await old(f)))
        n += await unlink(f).then(
          () => 1,
          () => 0,
        );
    }
    return n;
  }
}

function ignoreMissing(e: NodeJS.ErrnoException): void {
  if (e.code !== 'ENOENT') throw e;
}
