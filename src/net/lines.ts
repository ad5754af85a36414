// A bounded reader for line-oriented protocols with byte-counted data
// (IMDP, IMRP): UTF-8 control lines ending in LF, each with a maximum
// length and an idle timeout, and exactly N bytes of data with an
// inactivity timeout. Bytes that arrive ahead of time (pipelining) are kept
// for the next read. Nothing here knows any protocol verb.
import { PassThrough, type Readable } from 'node:stream';
import { oneLine } from '../log.js';
import { chunksOf, drained } from '../streams.js';

/** Text that is safe inside one protocol line: no control characters, bounded. */
export function lineText(s: string, max = 960): string {
  const t = oneLine(s).replace(/\\n/g, ' ');
  if (Buffer.byteLength(t) <= max) return t;
  return (
    Buffer.from(t)
      .subarray(0, max)
      .toString('utf8')
      .replace(/\uFFFD+$/, '') + '...'
  );
}

export type LineErrorKind = 'too-long' | 'timeout' | 'not-utf8' | 'control' | 'eof';

export class LineError extends Error {
  constructor(
    readonly kind: LineErrorKind,
    message: string,
  ) {
    super(message);
  }
}

export interface LineLimits {
  /** Longest line in bytes, LF excluded. */
  maxLine: number;
  /** How long to wait for a line, in ms. */
  idleTimeout: number;
  /** How long data may stall, in ms. */
  dataTimeout: number;
  /** How long one line may take from its first byte to its LF, in ms (a line dripped a byte at a time). */
  commandTimeout?: number;
  /** What the idle timeout's message calls a line: "command" (servers, the default) or "answer" (clients). */
  lineName?: string;
  /** Bytes per second that data must average, after a start of commandTimeout; 0 or absent = no minimum. */
  minRate?: number;
}

/** An absolute time by which some reading must be done, and the words for when it is not. */
interface Deadline {
  at: number;
  what: string;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
const CONTROL = /[\x00-\x08\x0a-\x1f\x7f]/;

export class LineReader {
  private buffered: Buffer = Buffer.alloc(0);
  private ended = false;
  private readonly iterator: AsyncIterator<Buffer>;

  constructor(
    input: Readable,
    public limits: LineLimits,
    /** Called each time a read must wait for the peer: a server flushes the answers it held back then. */
    private readonly onWait?: () => void,
  ) {
    this.iterator = chunksOf(input);
  }

  private filling?: Promise<boolean>;
  private readonly deadlines = new Map<string, Deadline>();

  /**
   * Set (or with `ms` undefined, clear) a named deadline for every read until
   * cleared: a session's "log in within", "the whole MAIL block within".
   * `what` is the error's text, e.g. "no login within 30 s".
   */
  deadline(name: string, ms: number | undefined, what = ''): void {
    if (ms === undefined) this.deadlines.delete(name);
    else this.deadlines.set(name, { at: Date.now() + ms, what });
  }

  /** The wait allowed now: `timeout` or less if a deadline comes first, and the words for running out. */
  private allowed(timeout: number, idle: string, extra?: Deadline): { ms: number; what: string } {
    let ms = timeout;
    let what = idle;
    for (const d of extra ? [...this.deadlines.values(), extra] : this.deadlines.values()) {
      const left = d.at - Date.now();
      if (left < ms) [ms, what] = [left, d.what];
    }
    return { ms, what };
  }

  private async fill(): Promise<boolean> {
    const r = await this.iterator.next();
    if (r.done) {
      this.ended = true;
      return false;
    }
    this.buffered = this.buffered.length ? Buffer.concat([this.buffered, r.value]) : r.value;
    return true;
  }

  /** Wait for more bytes; false at end of input. One read is in flight at a time, whoever waits for it. */
  private async more(timeout: number, what: string, extra?: Deadline): Promise<boolean> {
    if (this.ended) return false;
    const wait = this.allowed(timeout, `no ${what} for ${Math.round(timeout / 1000)} s`, extra);
    if (wait.ms <= 0) throw new LineError('timeout', wait.what);
    this.onWait?.();
    this.filling ??= this.fill().finally(() => {
      this.filling = undefined;
    });
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<'timeout'>((res) => {
      timer = setTimeout(() => res('timeout'), wait.ms);
    });
    try {
      const r = await Promise.race([this.filling, expired]);
      if (r === 'timeout') throw new LineError('timeout', wait.what);
      return r;
    } finally {
      clearTimeout(timer);
    }
  }

  /** A read is waiting for the peer's bytes now. */
  get waiting(): boolean {
    return this.filling !== undefined;
  }

  /** Bytes already received and not yet read (pipelined input). */
  get available(): number {
    return this.buffered.length;
  }

  /** The next line without its LF, or null at a clean end of input. CR before LF is refused like any control character. */
  async readLine(maxLine = this.limits.maxLine): Promise<string | null> {
    let searched = 0;
    // Once a line has begun it must end within the command timeout, however the bytes trickle in.
    let line: Deadline | undefined;
    const { commandTimeout } = this.limits;
    for (;;) {
      if (!line && this.buffered.length && commandTimeout) line = { at: Date.now() + commandTimeout, what: `no line end within ${commandTimeout / 1000} s` };
      const lf = this.buffered.indexOf(0x0a, searched);
      if (lf !== -1) {
        if (lf > maxLine) throw new LineError('too-long', `line longer than ${maxLine} bytes`);
        const raw = this.buffered.subarray(0, lf);
        this.buffered = this.buffered.subarray(lf + 1);
        let text: string;
        try {
          text = utf8.decode(raw);
        } catch {
          throw new LineError('not-utf8', 'line is not valid UTF-8');
        }
        if (CONTROL.test(text)) throw new LineError('control', 'control character in line (lines end with LF alone)');
        return text;
      }
      if (this.buffered.length > maxLine) throw new LineError('too-long', `line longer than ${maxLine} bytes`);
      searched = this.buffered.length;
      if (!(await this.more(this.limits.idleTimeout, this.limits.lineName ?? 'command', line))) {
        if (this.buffered.length === 0) return null;
        throw new LineError('eof', 'connection closed in the middle of a line');
      }
    }
  }

  /** Throw away input up to and including the next LF (after a too-long line); false if `limit` bytes came first. */
  async discardLine(limit: number): Promise<boolean> {
    let dropped = 0;
    for (;;) {
      const lf = this.buffered.indexOf(0x0a);
      if (lf !== -1) {
        this.buffered = this.buffered.subarray(lf + 1);
        return true;
      }
      dropped += this.buffered.length;
      this.buffered = Buffer.alloc(0);
      if (dropped > limit) return false;
      if (!(await this.more(this.limits.idleTimeout, 'line end'))) return false;
    }
  }

  /** Exactly `n` bytes, as they arrive; fails on end of input or a stall longer than the data timeout. */
  async *readBytes(n: number): AsyncGenerator<Buffer> {
    let left = n;
    const { minRate, commandTimeout } = this.limits;
    const start = Date.now() + (commandTimeout ?? 0);
    // With a minimum rate, the bytes so far buy time: one second per minRate bytes after the start.
    const rate = (): Deadline | undefined =>
      minRate ? { at: start + ((n - left) / minRate) * 1000, what: `data slower than ${minRate} bytes/s (${n - left} of ${n} bytes)` } : undefined;
    while (left > 0) {
      if (this.buffered.length === 0 && !(await this.more(this.limits.dataTimeout, 'data', rate()))) {
        throw new LineError('eof', `connection closed with ${left} of ${n} data bytes still to come`);
      }
      const take = Math.min(left, this.buffered.length);
      const chunk = this.buffered.subarray(0, take);
      this.buffered = this.buffered.subarray(take);
      left -= take;
      yield chunk;
    }
  }

  /**
   * Exactly `n` bytes into a stream for a consumer. `done` settles when all
   * `n` bytes have been read from the input: if the consumer destroys the
   * stream early, the rest is read and discarded, so the protocol stays in
   * step. `done` rejects (and the stream is destroyed) on end of input or a stall.
   */
  pumpData(n: number): { stream: PassThrough; done: Promise<void> } {
    const stream = new PassThrough({ highWaterMark: 256 * 1024 });
    const done = (async () => {
      try {
        for await (const chunk of this.readBytes(n)) {
          if (stream.destroyed || stream.writableEnded) continue;
          if (!stream.write(chunk)) await drained(stream);
        }
        if (!stream.destroyed) stream.end();
      } catch (e) {
        stream.destroy(e as Error);
        throw e;
      }
    })();
    done.catch(() => {});
    return { stream, done };
  }

  /** Read and discard `n` bytes (the rest of data nobody wants), keeping the protocol in step. */
  async skip(n: number): Promise<void> {
    for await (const _ of this.readBytes(n));
  }
}
