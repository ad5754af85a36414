// Transfer decoding of attachment bodies, over Buffers in large chunks.
// mailsplit's decoders (libbase64) turn every chunk into a string, test and
// strip it with regular expressions and slice it again: at a 1 GiB
// attachment that was a quarter of mime-to-ima's time. Node decodes base64
// natively and skips line ends while it does, so the common body (lines of
// base64 and CRLF, nothing else) needs only a count of its line ends to know
// where the last whole 4-character group ends. Anything else (padding,
// spaces, garbage, base64url characters) takes libbase64's algorithm for that
// chunk, so the bytes out are the same as the library's for every input.
import { Transform, type TransformCallback } from 'node:stream';
import type { BufferPool } from '../spool.js';

const LF = 0x0a;
const CR = 0x0d;
const PIECE = 64 * 1024;
/** Bytes out below which a chunk is decoded into a buffer of its own size, not a pooled one. */
const SMALL = 4096;
/** The most bytes a chunk of `length` bytes of base64 decodes to (with up to 3 characters carried from the chunk before). */
export const decodedSize = (length: number) => Math.floor((length + 3) / 4) * 3;
const NOT_BASE64 = /[^A-Za-z0-9+/=]/g;
/** Bytes Node's decoder reads as base64 but libbase64 strips as garbage, and the padding that ends a segment. */
const SPECIAL = [0x3d /* = */, 0x2d /* - */, 0x5f /* _ */];

const isBase64Char = (b: number) => (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || (b >= 0x30 && b <= 0x39) || b === 0x2b || b === 0x2f;

/** Number of LF and CR bytes, found natively (a byte loop in JS costs several times as much). */
function lineEnds(chunk: Buffer): number {
  let n = 0;
  for (let p = chunk.indexOf(LF); p !== -1; p = chunk.indexOf(LF, p + 1)) n++;
  for (let p = chunk.indexOf(CR); p !== -1; p = chunk.indexOf(CR, p + 1)) n++;
  return n;
}

/**
 * libbase64's decode(): Buffer.from() stops at the first padding character,
 * so input of several padded segments (a mailer that pads every line) is
 * decoded segment by segment.
 */
function decodeSegments(text: string): Buffer {
  const pad = text.indexOf('=');
  if (pad === -1 || !/[A-Za-z0-9+/\-_]/.test(text.slice(pad))) return Buffer.from(text, 'base64');
  const out = Buffer.alloc(Math.floor((text.length * 3) / 4));
  let length = 0;
  for (let start = 0; start <= text.length;) {
    let end = text.indexOf('=', start);
    if (end < 0) end = text.length;
    if (end > start) length += out.write(text.substring(start, end), length, 'base64');
    start = end + 1;
  }
  return Buffer.from(out.subarray(0, length));
}

/** A streaming base64 decoder giving the bytes libbase64's Decoder gives, for any input and any chunking. */
export class Base64Decoder extends Transform {
  /** Base64 characters (never more than 3) waiting for the rest of their group. */
  private carry = '';

  /**
   * With `pool`, the common body is decoded into its buffers (SpoolStore.add()
   * hands them back once written); a chunk passed on from `input` is handed
   * back as soon as it is decoded (fastBodies() in split.ts).
   */
  constructor(
    private readonly pool?: BufferPool,
    private readonly input?: BufferPool,
  ) {
    // Its chunks are read one at a time, as pushed. mailparser reads it with read(), which on a byte stream joins
    // what is queued (a line's few bytes before every large chunk, see split.ts) into a new Buffer: the pooled
    // buffers behind a join never came back, and when the spool's writes were slow (the kernel writing back a
    // just-written input) the pool allocated afresh for most chunks, 56 MB of garbage before a full collection.
    super({ readableObjectMode: true, readableHighWaterMark: 1 });
  }

  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    // Into one buffer per chunk: a reader's read() joins the buffers queued on a stream into a new one, and
    // one leaves nothing to join. In pieces of at most 64 KiB: the latin1 string of each then dies young
    // (larger ones live in V8's large-object space until a full collection), which keeps peak memory down.
    // Groups of 4 decode the same apart as together, so only the slow path, which handles padding, gets
    // the rest whole.
    const most = decodedSize(chunk.length);
    // Not a pool buffer for a few bytes: the line cut by each input chunk, passed on before the rest (split.ts),
    // took a whole one each, and the pool grew to twice the buffers in flight.
    const pool = this.pool && most <= this.pool.size && most >= SMALL ? this.pool : undefined;
    const out = pool ? pool.take() : Buffer.allocUnsafe(most);
    let length = 0;
    let at = 0;
    while (at < chunk.length) {
      const piece = chunk.subarray(at, at + PIECE);
      const n = this.fast(piece, out, length);
      if (n === undefined) break;
      length += n;
      at += piece.length;
    }
    if (length) this.push(pool ? pool.passOn(out.subarray(0, length)) : out.subarray(0, length));
    else pool?.handBack(out);
    if (at < chunk.length) {
      const rest = this.slow(chunk.subarray(at));
      if (rest.length) this.push(rest);
    }
    this.input?.consumed(chunk);
    cb();
  }

  override _flush(cb: TransformCallback): void {
    const out = this.carry ? decodeSegments(this.carry) : undefined;
    this.carry = '';
    if (out?.length) this.push(out);
    cb();
  }

  /** Lines of base64 characters and line ends only: decoded in one native call into out at offset (the bytes written), or undefined to take the slow path. */
  private fast(chunk: Buffer, out: Buffer, offset: number): number | undefined {
    for (const b of SPECIAL) if (chunk.indexOf(b) !== -1) return undefined;
    const chars = this.carry.length + chunk.length - lineEnds(chunk);
    if (chars < 4) return undefined;
    // The last chars % 4 characters wait for the next chunk; find them from the end, past line ends.
    let keep = chars % 4;
    let cut = chunk.length;
    let tail = '';
    while (keep > 0) {
      const b = chunk[--cut];
      if (b === LF || b === CR) continue;
      if (!isBase64Char(b)) return undefined;
      tail = String.fromCharCode(b) + tail;
      keep--;
    }
    const bytes = ((chars - tail.length) / 4) * 3;
    // Node skips what is not base64 (spaces, garbage), so fewer bytes than the count promises means some was there.
    if (out.write(this.carry + chunk.toString('latin1', 0, cut), offset, bytes, 'base64') !== bytes) return undefined;
    this.carry = tail;
    return bytes;
  }

  /** libbase64's Decoder, step for step: strip what is not base64, decode through the last padding, carry the partial group. */
  private slow(chunk: Buffer): Buffer {
    let b64 = this.carry + chunk.toString('latin1');
    this.carry = '';
    b64 = b64.replace(NOT_BASE64, '');
    let padded = '';
    const lastPad = b64.lastIndexOf('=');
    if (lastPad >= 0) {
      padded = b64.slice(0, lastPad + 1);
      b64 = b64.slice(lastPad + 1);
    }
    if (b64.length < 4) {
      this.carry = b64;
      b64 = '';
    } else if (b64.length % 4) {
      this.carry = b64.slice(-(b64.length % 4));
      b64 = b64.slice(0, b64.length - this.carry.length);
    }
    b64 = padded + b64;
    return b64 ? decodeSegments(b64) : Buffer.alloc(0);
  }
}
