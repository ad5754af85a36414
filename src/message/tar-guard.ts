// A pass-through that walks the tar block structure before tar-stream sees
// it. tar-stream buffers pax and GNU long-name entries whole, lets a pax
// `size` record override the header, and accepts every entry type; this guard
// bounds those buffers, allows only regular files (plus the pax and long-name
// entries that describe them), counts entries and bytes, and records what it
// saw so the reader can check that tar-stream saw the same. It also decides
// where the archive ends: only at two zero blocks (an input that stops
// anywhere else, even between entries, is truncated), followed by nothing
// but zero padding.
import { Transform, type TransformCallback } from 'node:stream';
import { MAX_PADDING_BYTES, type MessageLimits, MessageError } from './limits.js';

const BLOCK = 512;

export interface SeenEntry {
  type: 'file' | 'directory';
  size: number;
}

type State =
  | { at: 'header' }
  | { at: 'meta'; type: 'x' | 'L'; size: number; got: Buffer[]; have: number }
  | { at: 'data'; left: number }
  /** One zero block seen: the next must be the second. */
  | { at: 'zero' }
  /** Both end-of-archive blocks seen: only zero padding may follow. */
  | { at: 'end'; padding: number };

function octal(block: Buffer, offset: number, length: number, what: string): number {
  const field = block.subarray(offset, offset + length);
  if (field[0] & 0x80) {
    if (field[0] !== 0x80) throw new MessageError(`tar: negative ${what}`);
    let n = 0;
    for (let i = 1; i < field.length; i++) n = n * 256 + field[i];
    if (!Number.isSafeInteger(n)) throw new MessageError(`tar: ${what} too large`);
    return n;
  }
  const text = field
    .toString('latin1')
    .replace(/[\0 ]+$/, '')
    .replace(/^ +/, '');
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) throw new MessageError(`tar: bad ${what} field`);
  return parseInt(text, 8);
}

/** Parse pax records ("LEN key=value\n") strictly; returns the size record if any. */
function paxSize(buf: Buffer): number | undefined {
  let size: number | undefined;
  let rest = buf;
  while (rest.length > 0) {
    const sp = rest.indexOf(0x20);
    const lenText = sp > 0 ? rest.subarray(0, sp).toString('latin1') : '';
    if (!/^[1-9][0-9]{0,8}$/.test(lenText)) throw new MessageError('tar: malformed pax record');
    const len = Number(lenText);
    if (len > rest.length || rest[len - 1] !== 0x0a) throw new MessageError('tar: malformed pax record');
    const record = rest.subarray(sp + 1, len - 1).toString('utf8');
    const eq = record.indexOf('=');
    if (eq <= 0) throw new MessageError('tar: malformed pax record');
    const key = record.slice(0, eq);
    const value = record.slice(eq + 1);
    if (key === 'size') {
      if (!/^[0-9]{1,16}$/.test(value)) throw new MessageError('tar: bad pax size record');
      size = Number(value);
    } else if (key === 'linkpath') throw new MessageError('tar: link entries are not allowed');
    rest = rest.subarray(len);
  }
  return size;
}

const ZERO_BLOCK = Buffer.alloc(BLOCK);
const NO_BYTES = Buffer.alloc(0);
const isZero = (block: Buffer) => block.equals(ZERO_BLOCK);

/**
 * The guard as a stream: chunks pass through once walked, and the end of
 * the input must be the end of the archive.
 */
export class TarGuard extends Transform {
  readonly walker: TarWalker;

  /** `walker`: one that has walked the archive so far, for a guard that takes over in its middle. */
  constructor(limits: MessageLimits, walker = new TarWalker(limits)) {
    super();
    this.walker = walker;
  }

  /** What the walk saw, entry by entry. */
  get seen(): SeenEntry[] {
    return this.walker.seen;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      this.walker.inspect(chunk);
      cb(null, chunk);
    } catch (e) {
      cb(e as Error);
    }
  }

  override _flush(cb: TransformCallback): void {
    try {
      this.walker.finish();
      cb();
    } catch (e) {
      cb(e as Error);
    }
  }
}

/**
 * The guard's walk without a stream: for a reader that has the bytes in hand
 * or a program that spools a message before reading it, so that a bomb of
 * entries is stopped while it streams in.
 */
export class TarWalker {
  readonly seen: SeenEntry[] = [];
  private state: State = { at: 'header' };
  private pending = NO_BYTES;
  private entries = 0;
  private total = 0;
  private paxSizeNext: number | undefined;
  private metaBefore = false;

  constructor(private readonly limits: MessageLimits) {}

  /** Walk a chunk; throws a MessageError at the first broken rule or limit. */
  inspect(chunk: Buffer): void {
    this.walk(chunk);
  }

  /** True once both end-of-archive blocks have gone by. */
  get ended(): boolean {
    return this.state.at === 'end';
  }

  /** The input ended: throws unless the archive did (inspect()'s counterpart of the end of a stream). */
  finish(): void {
    // A writer killed between two entries leaves a well-formed prefix: only the end blocks tell it from a whole message.
    if (this.state.at !== 'end') throw new MessageError('tar: truncated archive (no end-of-archive blocks)');
  }

  private walk(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length) {
      const st = this.state;
      if (st.at === 'end') return this.padding(st, chunk.subarray(off));
      if (st.at === 'data') {
        const n = Math.min(st.left, chunk.length - off);
        st.left -= n;
        off += n;
        if (st.left === 0) this.state = { at: 'header' };
        continue;
      }
      let block: Buffer;
      if (this.pending.length === 0 && chunk.length - off >= BLOCK) {
        // A whole block in the chunk: looked at where it lies (a meta block is copied when kept).
        block = chunk.subarray(off, off + BLOCK);
        off += BLOCK;
      } else {
        const take = chunk.subarray(off, off + BLOCK - this.pending.length);
        off += take.length;
        this.pending = this.pending.length ? Buffer.concat([this.pending, take]) : Buffer.from(take);
        if (this.pending.length < BLOCK) return;
        block = this.pending;
        this.pending = NO_BYTES;
      }
      if (st.at === 'meta') this.metaBlock(st, block);
      else if (st.at === 'zero') this.secondZero(block);
      else this.header(block);
    }
  }

  /** After the end: zeros only (tar-stream would read entries hidden there), and not without bound. */
  private padding(st: Extract<State, { at: 'end' }>, rest: Buffer): void {
    if (rest.some((b) => b !== 0)) throw new MessageError('tar: data after the end-of-archive blocks');
    st.padding += rest.length;
    if (st.padding > MAX_PADDING_BYTES) throw new MessageError(`tar: more than ${MAX_PADDING_BYTES} bytes of padding after the end-of-archive blocks`);
  }

  private secondZero(block: Buffer): void {
    if (!isZero(block)) throw new MessageError('tar: a zero block not followed by another (end of archive) or an entry header');
    this.state = { at: 'end', padding: 0 };
  }

  private header(block: Buffer): void {
    if (isZero(block)) {
      if (this.metaBefore) throw new MessageError('tar: extended header without an entry');
      this.state = { at: 'zero' };
      return;
    }
    const type = String.fromCharCode(block[156]);
    const size = octal(block, 124, 12, 'size');
    switch (type) {
      case 'x':
      case 'L':
        if (this.metaBefore && type === 'x' && this.paxSizeNext !== undefined) throw new MessageError('tar: two pax headers for one entry');
        if (size > this.limits.maxMetaBytes) throw new MessageError(`tar: extended header of ${size} bytes exceeds the limit of ${this.limits.maxMetaBytes}`);
        if (size === 0) return;
        this.state = { at: 'meta', type, size, got: [], have: 0 };
        return;
      case '0':
      case '\0':
      case '5': {
        const real = this.paxSizeNext ?? size;
        this.paxSizeNext = undefined;
        this.metaBefore = false;
        if (type === '5' && real !== 0) throw new MessageError('tar: directory entry with data');
        if (++this.entries > this.limits.maxEntries) throw new MessageError(`message has more than ${this.limits.maxEntries} entries`);
        this.total += real;
        if (this.total > this.limits.maxTotalBytes) throw new MessageError(`message larger than the limit of ${this.limits.maxTotalBytes} bytes`);
        this.seen.push({ type: type === '5' ? 'directory' : 'file', size: real });
        if (real > 0) this.state = { at: 'data', left: Math.ceil(real / BLOCK) * BLOCK };
        return;
      }
      case '1':
      case '2':
      case 'K':
        throw new MessageError('tar: link entries are not allowed');
      case '3':
      case '4':
      case '6':
        throw new MessageError('tar: device and FIFO entries are not allowed');
      default:
        throw new MessageError(`tar: entry type "${type.replace(/[^\x20-\x7e]/g, '?')}" is not allowed (regular files only)`);
    }
  }

  private metaBlock(st: Extract<State, { at: 'meta' }>, block: Buffer): void {
    st.got.push(Buffer.from(block));
    st.have += BLOCK;
    if (st.have < st.size) return;
    const data = Buffer.concat(st.got).subarray(0, st.size);
    this.state = { at: 'header' };
    this.metaBefore = true;
    if (st.type === 'x') this.paxSizeNext = paxSize(data);
  }
}
