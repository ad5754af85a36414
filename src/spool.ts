// Spooling: read a stream of unknown length once, then hand out as many
// readers of it as needed. Small data stays in memory; past `memoryMax` it
// goes to a file that is unlinked as soon as it is created, so a crash never
// leaves it behind.
// fs.promises: loaded at first use (see mailbox.ts).
import { WriteStream, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { finished } from 'node:stream/promises';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { FdWriter } from './stdio.js';
import { chunksOf } from './streams.js';

export interface SpoolOptions {
  /** Bytes kept in memory before spilling to a file. */
  memoryMax?: number;
  /** Refuse more than this many bytes (the error names the limit). */
  limit?: number;
  dir?: string;
  /** Called on every chunk, e.g. to validate; throw to stop. */
  inspect?: (chunk: Buffer) => void;
}

/** Bytes of one read of a spool, and of the writes it gathers into one. */
export const CHUNK = 512 * 1024;
/**
 * Bytes of one part a SpoolStore keeps in memory. A larger part goes to the
 * file, and what was gathered of it in memory until then is garbage that
 * has lived long enough to wait for a full collection: the less, the better.
 */
const PART_MEMORY = 1024 * 1024;

/**
 * A copy of a few bytes held across chunks (a carry) in memory of its own:
 * Buffer.from() of a small one takes a slice of Node's shared 8 KiB slab
 * and keeps all of it alive, and a carry lives long enough to be promoted,
 * so each slab waited for a full collection (a megabyte per 64 MB streamed).
 */
export function ownCopy(bytes: Buffer): Buffer<ArrayBuffer> {
  const copy = Buffer.allocUnsafeSlow(bytes.length);
  bytes.copy(copy);
  return copy;
}

/**
 * Buffers lent out and handed back when their last holder is done with
 * them, for reuse. V8 frees a dead Buffer's memory only at a collection, and
 * a stream that makes little other garbage (a spooled part read back and
 * written out) triggers few: each chunk allocated afresh left up to 32 MB of
 * dead ones between collections. A taker passes a view of the buffer on as
 * the one reference to it (passOn); only the receiver of that very object
 * (not a slice or a copy made of it on the way) hands it back, when done
 * with it (consumed). A chunk never handed back is simply collected.
 */
export class BufferPool {
  private readonly free: Buffer[] = [];
  private readonly lent = new WeakSet<ArrayBufferLike>();
  private readonly passed = new WeakSet<Buffer>();
  /** Every buffer handed back is kept: there are never more than the most lent at once, and dropping one would make it garbage again. */
  constructor(readonly size: number) {}

  /** Whether a buffer handed back waits here: take() would not allocate. */
  get hasFree(): boolean {
    return this.free.length > 0;
  }

  take(): Buffer {
    const b = this.free.pop() ?? Buffer.allocUnsafeSlow(this.size);
    this.lent.add(b.buffer);
    return b;
  }

  /** Pass `view` (of a buffer taken from here) on as the one reference to that buffer. */
  passOn(view: Buffer): Buffer {
    this.passed.add(view);
    return view;
  }

  /** Whether `chunk` is a view passed on and not yet consumed. */
  passedOn(chunk: Buffer): boolean {
    return this.passed.has(chunk);
  }

  /** The receiver of `from`, a view passed on, passes on `to` (a view of the same buffer) as the one reference left. */
  transfer(from: Buffer, to: Buffer): void {
    if (this.passed.delete(from)) this.passed.add(to);
  }

  /** The receiver of a view passed on is done with it: its buffer is handed back. Anything else is ignored. */
  consumed(chunk: Buffer): void {
    if (this.passed.delete(chunk)) this.handBack(chunk);
  }

  /** A buffer taken from here and never passed on, handed back by its taker. */
  handBack(buf: Buffer): void {
    const memory = buf.buffer;
    if (!this.lent.delete(memory)) return;
    this.free.push(Buffer.from(memory, 0, this.size));
  }
}

/**
 * `out`, written through a stream that tells `pools` each chunk is consumed
 * once out's write of it is done. Only for a destination that holds no
 * chunk after its write callback (a file, process.stdout, a stage's stdout
 * from stdio.ts), never one that passes chunks on to a reader (a PassThrough).
 */
export function handingBack(out: Writable, ...pools: BufferPool[]): Writable {
  const w = new Writable({
    write(chunk: Buffer, _e, cb) {
      out.write(chunk, (err) => {
        if (!err) for (const pool of pools) pool.consumed(chunk);
        cb(err ?? null);
      });
    },
    final(cb) {
      out.end();
      finished(out).then(() => cb(), cb);
    },
  });
  out.on('error', (e) => w.destroy(e));
  return w;
}

/**
 * Whether chunks written to `out` are done with once its write callback has
 * run (see handingBack). Node's process.stdout is known by its documented
 * fd, 1, without reading process.stdout: that would make the stream when the
 * program writes elsewhere (for a pipe, loading net).
 */
export const writesThrough = (out: Writable) => out instanceof WriteStream || out instanceof FdWriter || (out as { fd?: unknown }).fd === 1;

/**
 * A file or pipe read in sequence into buffers from `pool` (each chunk a view
 * passed on, see BufferPool); a path is opened on the first read. The handle
 * is closed at the end or when destroyed.
 */
export function pooledReader(file: FileHandle | string, pool: BufferPool): Readable {
  let fh = typeof file === 'string' ? undefined : file;
  return new Readable({
    highWaterMark: pool.size,
    construct(cb) {
      if (fh) return cb();
      fsp.open(file as string, 'r').then((h) => {
        fh = h;
        cb();
      }, cb);
    },
    read() {
      const buf = pool.take();
      fh!.read(buf, 0, buf.length, null).then(
        ({ bytesRead }) => {
          if (bytesRead) return void this.push(pool.passOn(buf.subarray(0, bytesRead)));
          pool.handBack(buf);
          this.push(null);
        },
        (e) => this.destroy(e),
      );
    },
    destroy(err, cb) {
      if (!fh) return cb(err);
      fh.close().then(
        () => cb(err),
        () => cb(err),
      );
    },
  });
}

/**
 * A file read in sequence into pooled buffers that go back to the pool once
 * the caller says every byte before an offset is done with (release): for
 * consumers that slice and copy chunks beyond recognition (a tar parser)
 * but work through the input in order.
 */
export class InOrderReader {
  readonly stream: Readable;
  private readonly lent: { end: number; buf: Buffer }[] = [];
  private bytes = 0;
  constructor(
    fh: FileHandle,
    private readonly pool: BufferPool,
  ) {
    this.stream = new Readable({
      highWaterMark: pool.size,
      read: () => {
        const buf = pool.take();
        fh.read(buf, 0, buf.length, null).then(
          ({ bytesRead }) => {
            if (!bytesRead) {
              pool.handBack(buf);
              return void this.stream.push(null);
            }
            this.bytes += bytesRead;
            this.lent.push({ end: this.bytes, buf });
            this.stream.push(buf.subarray(0, bytesRead));
          },
          (e) => this.stream.destroy(e),
        );
      },
      destroy(err, cb) {
        fh.close().then(
          () => cb(err),
          () => cb(err),
        );
      },
    });
  }

  /** No byte before `offset` is held anywhere any more: the buffers that held only such bytes go back to the pool. */
  release(offset: number): void {
    while (this.lent.length && this.lent[0].end <= offset) this.pool.handBack(this.lent.shift()!.buf);
  }
}

/**
 * Reads a file handle by position, never closing it: readers of one spool
 * come and go (one may stop early), the handle stays open for the others.
 * (fs.ReadStream closes its fd when destroyed, whatever autoClose says.)
 * Chunks come from `pool` when given.
 */
function positionalReader(fh: FileHandle, start: number, size: number, pool?: BufferPool): Readable {
  let pos = start;
  return new Readable({
    highWaterMark: CHUNK,
    read() {
      if (pos >= size) return void this.push(null);
      const len = Math.min(CHUNK, size - pos);
      // A short read (the end of a part, a part of a few bytes) takes a free pool buffer if one
      // waits, else a buffer of its own size: where nothing hands chunks back (smtp-receive's
      // in-process chain), a fresh pool buffer for two bytes was 512 KiB of garbage.
      const pooled = pool && len <= pool.size && (len > pool.size / 2 || pool.hasFree) ? pool : undefined;
      fh.read(pooled ? pooled.take() : Buffer.allocUnsafe(len), 0, len, pos).then(
        ({ bytesRead, buffer }) => {
          pos += bytesRead;
          if (!bytesRead) pooled?.handBack(buffer);
          const view = bytesRead ? buffer.subarray(0, bytesRead) : null;
          this.push(view && pooled ? pooled.passOn(view) : view);
        },
        (e) => this.destroy(e),
      );
    },
  });
}

export class SpoolLimitError extends Error {}

/** A temporary file open for reading and writing, already unlinked: a crash leaves nothing behind. */
async function tempFile(dir: string): Promise<FileHandle> {
  const path = join(dir, `.ima-spool-${process.pid}-${process.getBuiltinModule('node:crypto').randomBytes(8).toString('hex')}`);
  const fh = await fsp.open(path, 'wx+', 0o600);
  await fsp.unlink(path);
  return fh;
}

export class Spool {
  private constructor(
    readonly size: number,
    private readonly memory: Buffer | undefined,
    private readonly file: FileHandle | undefined,
  ) {}

  static async from(input: AsyncIterable<unknown>, opts: SpoolOptions = {}): Promise<Spool> {
    const memoryMax = opts.memoryMax ?? 1024 * 1024;
    const chunks: Buffer[] = [];
    let size = 0;
    let file: FileHandle | undefined;
    try {
      for await (const c of input) {
        const chunk = typeof c === 'string' ? Buffer.from(c) : (c as Buffer);
        size += chunk.length;
        if (opts.limit !== undefined && size > opts.limit) throw new SpoolLimitError(`more than ${opts.limit} bytes`);
        opts.inspect?.(chunk);
        if (file) await file.write(chunk);
        else {
          chunks.push(chunk);
          if (size > memoryMax) {
            file = await tempFile(opts.dir ?? tmpdir());
            for (const b of chunks) await file.write(b);
            chunks.length = 0;
          }
        }
      }
    } catch (e) {
      await file?.close();
      throw e;
    }
    return new Spool(size, file ? undefined : Buffer.concat(chunks), file);
  }

  /** A fresh reader of the content from byte `start` on (a Buffer when it is small); its chunks from `pool` when given (see BufferPool). */
  open(start = 0, pool?: BufferPool): Readable | Buffer {
    if (this.memory) return start ? this.memory.subarray(start) : this.memory;
    if (start >= this.size) return Buffer.alloc(0);
    return positionalReader(this.file!, start, this.size, pool);
  }

  async dispose(): Promise<void> {
    await this.file?.close();
  }
}

/**
 * Many parts spooled into one store: the first ones in memory while they fit
 * a budget shared by all, the rest appended to one temporary file (unlinked
 * as soon as it is created). A message of ten thousand parts costs one
 * descriptor, and memory stays within the budget whatever the part sizes.
 */
export class SpoolStore {
  private file: FileHandle | undefined;
  private fileSize = 0;
  private memoryLeft: number;

  /** Where readers of spooled parts take their chunks from: see handingBack(). */
  readonly readBuffers = new BufferPool(CHUNK);

  constructor(private readonly opts: { memoryBudget?: number; dir?: string } = {}) {
    this.memoryLeft = opts.memoryBudget ?? 8 * 1024 * 1024;
  }

  /**
   * Read input to its end into the store; the part reads it back as often as asked.
   * Chunks of input passed on from `lentFrom` are consumed once written (or
   * copied, when kept in memory). A stream is read chunk by chunk for that
   * (chunksOf): iterating it joins what is queued into a new Buffer whenever
   * the writes fall behind, and the pooled buffers behind a join never came
   * back. With `done`, chunks kept in memory are copied, and done(n) says the
   * first n bytes are written or copied: the input holds none of them any more.
   */
  async add(input: AsyncIterable<unknown>, lentFrom?: BufferPool, done?: (bytes: number) => void): Promise<{ size: number; open(): Readable | Buffer }> {
    const chunks: Buffer[] = [];
    let size = 0;
    let start = -1;
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    // Writes go out one after the other while reading goes on; reading waits only when two are queued.
    let writing: Promise<void> = Promise.resolve();
    let queued = 0;
    const flush = async () => {
      if (pendingBytes === 0) return;
      const [data, at] = [pending, this.fileSize];
      this.fileSize += pendingBytes;
      pending = [];
      pendingBytes = 0;
      queued++;
      const file = this.file!;
      const end = this.fileSize - start; // bytes of this part written once this write is done
      writing = writing.then(async () => {
        await file.writev(data, at);
        queued--;
        if (lentFrom) for (const c of data) lentFrom.consumed(c);
        done?.(end);
      });
      writing.catch(() => {}); // awaited below and in finally; this only keeps a failure from counting as unhandled meanwhile
      if (queued > 2) await writing;
    };
    try {
      for await (const c of input instanceof Readable ? chunksOf(input) : input) {
        const chunk = typeof c === 'string' ? Buffer.from(c) : (c as Buffer);
        if (chunk.length === 0) continue;
        size += chunk.length;
        if (start === -1 && size <= Math.min(this.memoryLeft, PART_MEMORY)) {
          // A pooled chunk is a view of a larger buffer that would stay held: keep a copy.
          if (lentFrom?.passedOn(chunk)) {
            chunks.push(Buffer.from(chunk));
            lentFrom.consumed(chunk);
          } else chunks.push(done ? Buffer.from(chunk) : chunk);
          done?.(size);
          continue;
        }
        if (start === -1) {
          this.file ??= await tempFile(this.opts.dir ?? tmpdir());
          start = this.fileSize;
          pending = chunks.splice(0);
          pendingBytes = size - chunk.length;
        }
        pending.push(chunk);
        pendingBytes += chunk.length;
        if (pendingBytes >= CHUNK) await flush();
      }
      await flush();
    } finally {
      await writing;
    }
    if (start === -1) {
      this.memoryLeft -= size;
      const buf = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
      return { size, open: () => buf };
    }
    const file = this.file!;
    return { size, open: () => positionalReader(file, start, start + size, this.readBuffers) };
  }

  async dispose(): Promise<void> {
    await this.file?.close();
    this.file = undefined;
  }
}
