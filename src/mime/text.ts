// Text parts: line ends and character sets. Bodies in IMA are UTF-8 with LF
// line ends; legacy text comes in any charset (decoded with libmime's
// iconv-lite streams, as mailparser does) and with CRLF.
import { Transform, type TransformCallback } from 'node:stream';
import { DecodeStream } from 'libmime/lib/charset';
import { Utf8Checker } from '../message/utf8.js';
import type { BufferPool } from '../spool.js';

/**
 * Drops the CR of every CRLF, across chunk boundaries. A lone CR stays, or
 * with `loneCr: 'lf'` (text, old Mac line ends) becomes an LF. A chunk lent
 * from `pool` (a view passed on, see BufferPool) is changed where it is, and
 * what is left of it passed on in its place: no second buffer per chunk.
 */
export class CrlfToLf extends Transform {
  private heldCr = false;
  /** The last byte passed on so far (-1: none), so a reader need not read the text again to learn how it ends. */
  lastByte = -1;
  constructor(private readonly opts: { loneCr?: 'keep' | 'lf'; pool?: BufferPool } = {}) {
    super();
  }
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    let buf = chunk;
    if (this.heldCr) {
      this.heldCr = false;
      if (buf[0] !== 0x0a) this.out(this.loneCr());
    }
    if (buf.length && buf[buf.length - 1] === 0x0d) {
      this.heldCr = true;
      buf = buf.subarray(0, -1);
    }
    const lent = this.opts.pool?.passedOn(chunk) ? this.opts.pool : undefined;
    const text = dropCrs(buf, this.opts.loneCr === 'lf' ? 0x0a : 0x0d, lent !== undefined);
    if (lent && text.length) lent.transfer(chunk, text);
    else lent?.consumed(chunk);
    this.out(text);
    cb();
  }
  override _flush(cb: TransformCallback): void {
    if (this.heldCr) this.out(this.loneCr());
    cb();
  }
  private out(buf: Buffer): void {
    if (!buf.length) return;
    this.lastByte = buf[buf.length - 1];
    this.push(buf);
  }
  private loneCr(): Buffer {
    return Buffer.from([this.opts.loneCr === 'lf' ? 0x0a : 0x0d]);
  }
}

/**
 * What CrlfToLf with `loneCr: 'lf'` makes of `source`, found without making
 * it: the size and last byte (-1: none) of its output, and whether the input
 * is UTF-8. A chunk lent from `pool` is handed back once looked at.
 */
export async function lfTextOf(source: AsyncIterable<Buffer>, pool?: BufferPool): Promise<{ utf8: boolean; size: number; last: number }> {
  const checker = new Utf8Checker();
  let utf8 = true;
  let size = 0;
  let last = -1;
  for await (const chunk of source) {
    if (!chunk.length) continue;
    if (utf8) utf8 = checker.check(chunk);
    size += chunk.length;
    // Each CRLF loses its CR; a lone CR becomes an LF, the same size. One may be cut between two chunks.
    if (last === 0x0d && chunk[0] === 0x0a) size--;
    for (let at = chunk.indexOf(CRLF); at !== -1; at = chunk.indexOf(CRLF, at + 2)) size--;
    last = chunk[chunk.length - 1];
    pool?.consumed(chunk);
  }
  return { utf8: utf8 && checker.end(), size, last: last === 0x0d ? 0x0a : last };
}
const CRLF = Buffer.from('\r\n');

/** Fails on the first byte sequence that is not UTF-8; passes bytes on unchanged. */
export class Utf8Validator extends Transform {
  valid = true;
  // buffer.isUtf8 checks the bytes where they are; a fatal TextDecoder built
  // a string of every chunk only to throw it away (a tenth of smtp-receive's
  // main thread for 1 MB text messages).
  private readonly checker = new Utf8Checker();
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    if (this.valid) this.valid = this.checker.check(chunk);
    cb(null, chunk);
  }
  override _flush(cb: TransformCallback): void {
    if (this.valid) this.valid = this.checker.end();
    cb();
  }
}

/**
 * buf (which does not end in CR) with each CRLF made LF and each lone CR
 * made loneCr. A latin1 string round trip through a regex replace made two
 * strings of every chunk, 3.5 ms of work and garbage per MB of text; a
 * buf.copy() per line made a Uint8Array per line, a tenth of smtp-receive's
 * main thread for 1 MB text messages. So: one native copy of the whole (none
 * in place), then the text between CRs moved down with copyWithin, which
 * makes no object (0.6 ms per MB of 80-byte lines against 0.8 for buf.copy).
 */
function dropCrs(buf: Buffer, loneCr: number, inPlace: boolean): Buffer {
  const cr = buf.indexOf(0x0d);
  // Most of a large message is base64 written with the right line ends already: nothing to do.
  if (cr === -1) return buf;
  const out = inPlace ? buf : Buffer.allocUnsafe(buf.length);
  if (!inPlace) out.set(buf);
  return out.subarray(0, compact(buf, out, cr, loneCr));
}

/**
 * The work of dropCrs from the first CR: out holds buf's bytes (or is buf);
 * returns the length of the text. In place, each byte moves down to where it
 * is read from or below, never past what is still to be read. V8 compiles
 * the loop of a long call while it runs (on-stack replacement) and keeps that
 * code for later calls; a property read or a call met only after the loop had
 * no type feedback in it, and every later call fell back to the interpreter
 * there (88 times over 200 messages of 1 MB). So the loop's last round ends
 * the call and does nothing the other rounds do not.
 */
function compact(buf: Buffer, out: Buffer, first: number, loneCr: number): number {
  const size = buf.length;
  let length = first;
  let from = first;
  for (let cr = first; ; cr = buf.indexOf(0x0d, from)) {
    const end = cr === -1 ? size : cr;
    if (end > from && length !== from) out.copyWithin(length, from, end);
    length += end - from;
    if (cr === -1) return length;
    const crlf = buf[cr + 1] === 0x0a;
    out[length++] = crlf ? 0x0a : loneCr;
    from = cr + (crlf ? 2 : 1);
  }
}

const UTF8_LIKE = /^(?:(?:us-?)?ascii|utf-?8|7bit|8bit)$/i;

/**
 * The decoder of a text part's charset, and whether decoding it loses
 * nothing for sure: an unknown charset is decoded as UTF-8 with replacement,
 * and then the caller keeps the original bytes too.
 */
export function charsetDecoder(charset: string | undefined): { decoder: Transform | undefined; known: boolean } {
  const name = (charset ?? 'utf-8').trim();
  if (name === '' || UTF8_LIKE.test(name)) return { decoder: undefined, known: true };
  const d = new DecodeStream(name);
  return { decoder: d, known: d.supported };
}
