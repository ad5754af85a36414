// Spooling: read a stream of unknown length once, then hand out as many
// readers of it as needed. Small data stays in memory; past `memoryMax` it
// goes to a file that is unlinked as soon as it is created, so a crash never
// leaves it behind.
import { randomBytes } from 'node:crypto';
import { type FileHandle, open, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';

export interface SpoolOptions {
  /** Bytes kept in memory before spilling to a file. */
  memoryMax?: number;
  /** Refuse more than this many bytes (the error names the limit). */
  limit?: number;
  dir?: string;
  /** Called on every chunk, e.g. to validate; throw to stop. */
  inspect?: (chunk: Buffer) => void;
}

const CHUNK = 256 * 1024;

/**
 * Reads a file handle by position, never closing it: readers of one spool
 * come and go (one may stop early), the handle stays open for the others.
 * (fs.ReadStream closes its fd when destroyed, whatever autoClose says.)
 */
function positionalReader(fh: FileHandle, start: number, size: number): Readable {
  let pos = start;
  return new Readable({
    highWaterMark: CHUNK,
    read() {
      if (pos >= size) return void this.push(null);
      const len = Math.min(CHUNK, size - pos);
      fh.read(Buffer.allocUnsafe(len), 0, len, pos).then(
        ({ bytesRead, buffer }) => {
          pos += bytesRead;
          this.push(bytesRead ? buffer.subarray(0, bytesRead) : null);
        },
        (e) => this.destroy(e),
      );
    },
  });
}

export class SpoolLimitError extends Error {}

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
            file = await Spool.tempFile(opts.dir ?? tmpdir());
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

  private static async tempFile(dir: string): Promise<FileHandle> {
    const path = join(dir, `.ima-spool-${process.pid}-${randomBytes(8).toString('hex')}`);
    const fh = await open(path, 'wx+', 0o600);
    await unlink(path);
    return fh;
  }

  /** A fresh reader of the content from byte `start` on (a Buffer when it is small). */
  open(start = 0): Readable | Buffer {
    if (this.memory) return start ? this.memory.subarray(start) : this.memory;
    if (start >= this.size) return Buffer.alloc(0);
    return positionalReader(this.file!, start, this.size);
  }

  async dispose(): Promise<void> {
    await this.file?.close();
  }
}
