// Spooling: read a stream of unknown length once, then hand out as many
// readers of it as needed. Small data stays in memory; past `memoryMax` it
// goes to a file that is unlinked as soon as it is created, so a crash never
// leaves it behind.
import { randomBytes } from 'node:crypto';
import { type FileHandle, open, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';

const CHUNK = 256 * 1024;

export interface SpoolOptions {
  /** Bytes kept in memory before spilling to a file. */
  memoryMax?: number;
  /** Refuse more than this many bytes (the error names the limit). */
  limit?: number;
  dir?: string;
  /** Called on every chunk, e.g. to validate; throw to stop. */
  inspect?: (chunk: Buffer) => void;
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
    // Positional reads through the FileHandle, never an fs.ReadStream on its fd:
    // destroying a ReadStream closes the fd, even with autoClose false, and
    // that would break every other reader of this spool.
    const file = this.file!;
    const size = this.size;
    async function* chunks(): AsyncGenerator<Buffer> {
      for (let pos = start; pos < size; ) {
        const want = Math.min(CHUNK, size - pos);
        const { bytesRead, buffer } = await file.read(Buffer.allocUnsafe(want), 0, want, pos);
        if (bytesRead === 0) throw new Error('spool file shorter than written');
        pos += bytesRead;
        yield bytesRead === want ? buffer : buffer.subarray(0, bytesRead);
      }
    }
    return Readable.from(chunks(), { objectMode: false, highWaterMark: CHUNK });
  }

  async dispose(): Promise<void> {
    await this.file?.close();
  }
}
