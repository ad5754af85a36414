// The standard streams of a stage run as a process (run.ts).
//
// Node makes process.stdin, stdout and stderr over a pipe or a socket as
// net.Sockets, and the first touch loads net and its bindings: in a
// handle-incoming-mail spawned per message (the delivery bench) that was
// 2.2-2.5 ms of its 40. A stage reads one message and writes a few lines,
// so here a pipe, a socket or a file on its standard descriptors is read(2)
// and write(2), as qmail's programs do. These block: the process waits in
// read(2) for its writer and in write(2) for its reader. A stage has nothing
// else to do meanwhile. A server or a daemon has (timeouts, connections, a
// log that must not stall it), and a terminal is Node's to handle: those
// keep Node's streams (run.ts decides).
import { fstatSync, readSync, writeSync } from 'node:fs';
import { Readable, Writable } from 'node:stream';

/** A pipe's capacity: one read(2) takes what a writer can have in flight. */
const READ_SIZE = 64 * 1024;

/** Whether `fd` is a pipe, a socket or a regular file: not a terminal, a device, or closed. */
export function isPlainStream(fd: number): boolean {
  try {
    const st = fstatSync(fd);
    return st.isFIFO() || st.isSocket() || st.isFile();
  } catch {
    return false;
  }
}

/**
 * A descriptor read with read(2). Each read waits for the next turn of the
 * event loop (setImmediate): what the data already read set going (a parse,
 * an answer, a file written) runs first, so a program that can answer from
 * what it has answers before it waits for more. A descriptor its parent left
 * non-blocking (EAGAIN) is read by Node's own stream from then on.
 */
export class FdReader extends Readable {
  private buf = Buffer.allocUnsafe(READ_SIZE);
  private handedTo?: Readable;

  constructor(
    private readonly fd: number,
    private readonly nodeStream: () => Readable,
  ) {
    super();
  }

  override _read(): void {
    if (this.handedTo) this.handedTo.resume();
    else setImmediate(() => this.readOnce());
  }

  override _destroy(err: Error | null, cb: (err: Error | null) => void): void {
    this.handedTo?.destroy();
    cb(err);
  }

  private readOnce(): void {
    if (this.destroyed) return;
    let n: number;
    try {
      n = readSync(this.fd, this.buf, 0, this.buf.length, null);
    } catch (e) {
      // No EINTR to retry: libuv installs signal handlers with SA_RESTART, so read(2) goes on.
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return this.handOver();
      this.destroy(e as Error);
      return;
    }
    if (n === 0) {
      this.push(null);
      return;
    }
    // A short read is copied (from the small-buffer pool) and the buffer kept
    // for the next read; a long one is passed on as it is and a new one made.
    if (n < READ_SIZE / 2) return void this.push(Buffer.from(this.buf.subarray(0, n)));
    const chunk = this.buf.subarray(0, n);
    this.buf = Buffer.allocUnsafe(READ_SIZE);
    this.push(chunk);
  }

  private handOver(): void {
    const s = this.nodeStream();
    this.handedTo = s;
    s.on('data', (c: Buffer) => {
      if (!this.push(c)) s.pause();
    });
    s.once('end', () => this.push(null));
    s.once('error', (e) => this.destroy(e));
  }
}

/**
 * A descriptor written with write(2): a chunk's callback runs once all of it
 * is written. A descriptor its parent left non-blocking (EAGAIN) is written
 * by Node's own stream from then on.
 */
export class FdWriter extends Writable {
  private handedTo?: Writable;

  constructor(
    private readonly fd: number,
    private readonly nodeStream: () => Writable,
  ) {
    super();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.handedTo) return void this.handedTo.write(chunk, cb);
    let done = 0;
    try {
      while (done < chunk.length) done += writeSync(this.fd, chunk, done);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') return cb(e as Error);
      this.handedTo = this.nodeStream();
      this.handedTo.on('error', (err) => this.destroy(err));
      return void this.handedTo.write(chunk.subarray(done), cb);
    }
    cb();
  }

  override _final(cb: (err?: Error | null) => void): void {
    // What Node's stream still holds is written before 'finish'.
    if (this.handedTo) this.handedTo.write(Buffer.alloc(0), cb);
    else cb();
  }
}
