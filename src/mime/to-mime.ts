// IMA -> MIME (ima-mime(7)). nodemailer's MailComposer builds the MIME
// structure (parts, encodings, boundaries), attachments streamed from their
// files or spools, never read whole. The header section is ours: the
// composer formats address and References headers its own way, and the
// originals that mime-to-ima kept must come back exactly as they were.
import { dirname } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Readable, Transform, type TransformCallback, type Writable, pipeline } from 'node:stream';
import MailComposer from 'nodemailer/lib/mail-composer';
import { detectMimeType } from 'nodemailer/lib/mime-funcs';
import { Failure, asFailure, dataError } from '../failure.js';
import { Mailbox } from '../mailbox.js';
import { NotPlainError } from '../mailbox/below.js';
import { DEFAULT_LIMITS, type Headers, type MessageLimits, MessageError, type MessageParts, type Part, parseHeaders, readMessage } from '../message/index.js';
import { BufferPool, CHUNK as SPOOL_CHUNK, SpoolStore, handingBack, ownCopy, writesThrough } from '../spool.js';
import { CONTENT_IDS, toMimeHeaderLines } from './headers.js';
import { parseContentIds } from './names.js';
import { CrlfToLf } from './text.js';

export interface ImaToMimeOptions {
  /** The pool the parts' chunks are passed on from (a SpoolStore's readBuffers): encoders consume them. */
  readBuffers?: BufferPool;
  /** "crlf" for SMTP, "lf" (the default) for files, pipes and Maildir. */
  newline?: 'crlf' | 'lf';
  /** Write the bcc header (a mailbox copy: yes; a message going out over SMTP: never). */
  keepBcc?: boolean;
  /**
   * Nothing in 8bit: for an SMTP server without 8BITMIME (RFC 6152). A
   * message/* part whose bytes need 8bit goes as application/octet-stream in
   * base64, as one that 8bit cannot carry does (see messageEncoding).
   */
  sevenBit?: boolean;
}

/**
 * An attachment's type from its name's extension, if it has one.
 * detectMimeType alone takes a name without an extension for one ("eml",
 * "EML.": message/rfc822), and the way back to IMA then renames such a
 * file to "eml.eml": a name without a real extension is just bytes.
 */
function typeOfName(name: string): string {
  const dot = name.lastIndexOf('.');
  return dot > 0 && dot < name.length - 1 ? detectMimeType(name) : 'application/octet-stream';
}

/** Text up to this size is handed to the composer as a string, so plain ASCII goes out as 7bit; larger text is streamed. */
const TEXT_IN_MEMORY = 1024 * 1024;

/**
 * A stream that opens its source only when first read: a message of many
 * attachments holds one file open at a time. `through` (an encoder) is put
 * behind the source when it opens.
 */
function lazy(part: Part, through?: () => Transform): Readable {
  let source: Readable | undefined;
  return new Readable({
    read() {
      if (!source) {
        let opened = part.open();
        if (Buffer.isBuffer(opened) && !through) {
          this.push(opened);
          this.push(null);
          return;
        }
        if (through) opened = pipeline(Buffer.isBuffer(opened) ? Readable.from([opened]) : opened, through(), () => {}) as unknown as Readable;
        source = opened as Readable;
        source.on('data', (c: Buffer) => {
          if (!this.push(c)) source!.pause();
        });
        source.on('end', () => this.push(null));
        source.on('error', (e) => this.destroy(e));
        return;
      }
      source.resume();
    },
    destroy(err, cb) {
      source?.destroy();
      cb(err);
    },
  });
}

async function textOf(part: Part): Promise<string | Readable> {
  if (part.size > TEXT_IN_MEMORY) return lazy(part);
  const data = part.open();
  if (Buffer.isBuffer(data)) return data.toString('utf8');
  const chunks: Buffer[] = [];
  for await (const c of data) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * A message/* part may not be encoded (RFC 2046 5.2.1): it goes as 7bit or
 * 8bit when its bytes survive that exactly (line ends of the output's kind,
 * no NUL, no line over 998 bytes; no byte over 127 when `sevenBit`);
 * otherwise as application/octet-stream in base64, which carries any bytes
 * and keeps its .eml name.
 */
async function messageEncoding(part: Part, newline: 'lf' | 'crlf', sevenBit: boolean): Promise<{ contentTransferEncoding: string } | { contentType: string }> {
  let eightBit = false;
  let line = 0;
  let prev = -1;
  const data = part.open();
  for await (const chunk of Buffer.isBuffer(data) ? [data] : data) {
    for (const b of chunk as Buffer) {
      if (b === 0 || (b === 0x0d && newline === 'lf') || (newline === 'crlf' && (prev === 0x0d) !== (b === 0x0a))) {
        if (!Buffer.isBuffer(data)) data.destroy();
        return { contentType: 'application/octet-stream' };
      }
      line = b === 0x0a ? 0 : line + 1;
      if (line > 998) {
        if (!Buffer.isBuffer(data)) data.destroy();
        return { contentType: 'application/octet-stream' };
      }
      if (b > 0x7f) {
        if (sevenBit) {
          if (!Buffer.isBuffer(data)) data.destroy();
          return { contentType: 'application/octet-stream' };
        }
        eightBit = true;
      }
      prev = b;
    }
  }
  if (prev === 0x0d) return { contentType: 'application/octet-stream' };
  return { contentTransferEncoding: eightBit ? '8bit' : '7bit' };
}

const LINE_BYTES = 57; // 76 base64 characters
/** Bytes encoded at a time: whole lines, and a string small enough to die young (not in V8's large-object space). */
const PIECE_BYTES = LINE_BYTES * 1024;
/** Input chunks up to this size are encoded into one pooled buffer (what a spool's reader gives). */
const POOLED_INPUT = SPOOL_CHUNK;
const encodedSize = (bytes: number, newline: number) => Math.ceil(bytes / LINE_BYTES) * (76 + newline);

/**
 * Base64 in lines of 76 characters joined by `newline`, no line end after
 * the last: the bytes nodemailer's encoder writes (then CRLF-to-LF
 * converted), made from large blocks, one native encoding per block. The
 * composer's encoder plus the conversion of its 2.3 million CRLFs per 128 MiB
 * back to LF were most of ima-to-mime's time for a large attachment.
 * With pools, input chunks passed on from `input` are consumed, and each
 * chunk out is a view passed on from `output` (see BufferPool).
 */
export class Base64Lines extends Transform {
  private rest = Buffer.alloc(0);
  private started = false;
  private text = Buffer.alloc(0);
  private readonly output: BufferPool | undefined;
  constructor(
    private readonly newline: Buffer,
    private readonly pools: { input?: BufferPool; output?: BufferPool } = {},
  ) {
    super();
    this.output = pools.output;
  }
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    const total = this.rest.length + chunk.length;
    const whole = total - (total % LINE_BYTES);
    if (!whole) {
      this.rest = Buffer.concat([this.rest, chunk]);
      this.pools.input?.consumed(chunk);
      return cb();
    }
    const most = encodedSize(whole, this.newline.length);
    const pool = this.output && most <= this.output.size ? this.output : undefined;
    const out = pool ? pool.take() : Buffer.allocUnsafe(most);
    let n = 0;
    let from = 0;
    // The line begun in the chunk before, completed from this one.
    if (this.rest.length) {
      from = LINE_BYTES - this.rest.length;
      n = this.lines(Buffer.concat([this.rest, chunk.subarray(0, from)]), out, n);
    }
    const end = whole - this.rest.length;
    for (let at = from; at < end; at += PIECE_BYTES) n = this.lines(chunk.subarray(at, Math.min(at + PIECE_BYTES, end)), out, n);
    this.rest = ownCopy(chunk.subarray(end));
    this.pools.input?.consumed(chunk);
    const view = out.subarray(0, n);
    cb(null, pool ? pool.passOn(view) : view);
  }
  override _flush(cb: TransformCallback): void {
    if (!this.rest.length) return cb();
    const out = Buffer.allocUnsafe(encodedSize(this.rest.length, this.newline.length));
    cb(null, out.subarray(0, this.lines(this.rest, out, 0)));
  }
  /** Encode `block` (whole lines, but for the very last) into `out` at `n`; the new end. */
  private lines(block: Buffer, out: Buffer, n: number): number {
    const chars = Math.ceil(block.length / 3) * 4;
    if (this.text.length < chars) this.text = Buffer.allocUnsafeSlow(Math.max(chars, Math.ceil(PIECE_BYTES / 3) * 4));
    const text = this.text;
    text.write(block.toString('base64'), 0, 'latin1');
    const nl = this.newline;
    for (let from = 0; from < chars; from += 76) {
      if (this.started) n += nl.copy(out, n);
      this.started = true;
      n += text.copy(out, n, from, Math.min(from + 76, chars));
    }
    return n;
  }
}

/** The pool Base64Lines takes its chunks out from, for an input pool of chunks up to POOLED_INPUT bytes. */
export const encodedPool = (newline: 'lf' | 'crlf') => new BufferPool(encodedSize(POOLED_INPUT + LINE_BYTES, newline === 'lf' ? 1 : 2));

/**
 * The composer passes an attachment in a transfer encoding it does not know
 * as it is: ours are given as base64 lines under a per-message marker, which
 * this puts back to "base64" in the part's header. (The marker is random: no
 * content can hold it.)
 */
class EncodingMarker extends Transform {
  private held = Buffer.alloc(0);
  readonly marker = `x-ima-base64-${randomBytes(12).toString('hex')}`;
  private readonly bytes = Buffer.from(this.marker);
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    let data = this.held.length ? Buffer.concat([this.held, chunk]) : chunk;
    const parts: Buffer[] = [];
    for (let at = data.indexOf(this.bytes); at !== -1; at = data.indexOf(this.bytes)) {
      parts.push(data.subarray(0, at), BASE64);
      data = data.subarray(at + this.bytes.length);
    }
    // Hold back an end that could be the start of a marker cut by the chunk boundary.
    let keep = Math.min(this.bytes.length - 1, data.length);
    while (keep > 0 && !data.subarray(data.length - keep).equals(this.bytes.subarray(0, keep))) keep--;
    // Nothing to change: the chunk itself goes on (a pooled one stays recognisable, see BufferPool).
    if (data === chunk && !parts.length && !keep) {
      this.held = EMPTY;
      return cb(null, chunk);
    }
    this.held = Buffer.from(data.subarray(data.length - keep));
    parts.push(data.subarray(0, data.length - keep));
    cb(null, parts.length === 1 ? parts[0] : Buffer.concat(parts));
  }
  override _flush(cb: TransformCallback): void {
    cb(null, this.held.length ? this.held : undefined);
  }
}
const BASE64 = Buffer.from('base64');
const EMPTY = Buffer.alloc(0);

/** Replaces the composer's root header block by ours, keeping its MIME-Version and Content-* lines. */
class OwnHeaders extends Transform {
  private head: Buffer | undefined = Buffer.alloc(0);
  constructor(private readonly own: string[]) {
    super();
  }
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    if (!this.head) return cb(null, chunk);
    this.head = Buffer.concat([this.head, chunk]);
    const end = this.head.indexOf('\r\n\r\n');
    if (end === -1) return cb();
    const theirs = this.head
      .subarray(0, end)
      .toString('latin1')
      .split(/\r\n(?![ \t])/)
      .filter((l) => /^(MIME-Version|Content-)/i.test(l));
    const rest = this.head.subarray(end + 4);
    this.head = undefined;
    cb(null, Buffer.concat([Buffer.from([...this.own, ...theirs].join('\r\n') + '\r\n\r\n', 'utf8'), rest]));
  }
}

/**
 * Pipe streams into the last one and wait for it to finish. (stream.pipeline
 * makes and aborts an AbortController each time, and the DOMException that
 * costs was a tenth of converting a small message.) Not joinStreams: the
 * last one may be process.stdout, which must be ended here (pipe() never
 * does) and never destroyed with a conversion's error.
 */
function pump(first: Readable, ...rest: Writable[]): Promise<void> {
  const all = [first, ...rest];
  const last = rest[rest.length - 1];
  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (e: Error) => {
      if (settled) return;
      settled = true;
      for (const s of all) s.destroy();
      reject(e);
    };
    for (const s of all) s.on('error', fail);
    let from: Readable = first;
    for (const to of rest.slice(0, -1)) from = from.pipe(to) as unknown as Readable;
    // pipe() never ends process.stdout, so 'finish' would never come: the last one is ended here.
    from.pipe(last, { end: false });
    from.on('end', () => last.end());
    last.on('finish', () => {
      settled = true;
      resolve();
    });
    last.on('close', () => fail(new Error('output closed before the message was written')));
  });
}

/** Write an IMA message as MIME to `out`, which is ended afterwards. */
/** What a MIME form written needs of an SMTP server. */
export interface MimeWritten {
  /** Some of it went as 8bit (a message/* part): BODY=8BITMIME (RFC 6152). */
  eightBit: boolean;
  /** Its header section has UTF-8 (an address with a non-ASCII local part, a field kept verbatim): SMTPUTF8 (RFC 6531, 6532). */
  utf8Headers: boolean;
}

/** Write the MIME form of parts to out, and say what it needs of an SMTP server. */
export async function writeMime(parts: MessageParts, out: Writable, opts: ImaToMimeOptions = {}): Promise<MimeWritten> {
  const cids = parseContentIds(parts.headers.get(CONTENT_IDS));
  const newline = opts.newline ?? 'lf';
  let marker: EncodingMarker | undefined; // made only for a message with such attachments: its randomness costs
  let eightBit = false;
  const nl = Buffer.from(newline === 'lf' ? '\n' : '\r\n');
  // A file or stdout is done with a chunk once written: encoded chunks, and spooled ones passed through as they are, are then reused.
  const encoded = writesThrough(out) ? encodedPool(newline) : undefined;
  const pools = { input: opts.readBuffers, output: encoded };
  const base64 = (a: Part) => ({
    content: lazy(a, () => new Base64Lines(nl, pools)),
    contentTransferEncoding: (marker ??= new EncodingMarker()).marker,
  });
  const composer = new MailComposer({
    // Both are thrown away (our header section replaces the composer's); given, they spare it many small random reads.
    messageId: '<unused@localhost>',
    baseBoundary: randomBytes(12).toString('hex'),
    text: parts.body ? await textOf(parts.body) : undefined,
    html: parts.bodyHtml ? await textOf(parts.bodyHtml) : undefined,
    attachments: await Promise.all(
      (parts.attachments ?? []).map(async (a) => {
        const type = typeOfName(a.name);
        // Given, not left to the composer, which would guess it from the name as detectMimeType does.
        const common = { filename: a.name, cid: cids.get(a.name), contentType: type };
        // Text the composer writes quoted-printable, as before; everything else it would write as base64 is ours.
        if (/^text\//i.test(type)) return { ...common, content: lazy(a) };
        if (!/^message\//i.test(type)) return { ...common, ...base64(a) };
        const asMessage = await messageEncoding(a, newline, opts.sevenBit ?? false);
        if (!('contentTransferEncoding' in asMessage)) return { ...common, ...asMessage, ...base64(a) };
        if (asMessage.contentTransferEncoding === '8bit') eightBit = true;
        return { ...common, ...asMessage, content: lazy(a) };
      }),
    ),
  });
  const lines = toMimeHeaderLines(parts.headers, { keepBcc: opts.keepBcc ?? false });
  const own = new OwnHeaders(lines);
  const mime = composer.compile().createReadStream();
  try {
    const last = encoded ? handingBack(out, encoded, ...(opts.readBuffers ? [opts.readBuffers] : [])) : out;
    const stages = [own, ...(marker ? [marker] : []), ...(newline === 'crlf' ? [] : [new CrlfToLf()]), last];
    await pump(mime, ...stages);
    // The composer's own lines (MIME-Version, Content-*) are ASCII: it encodes names.
    return { eightBit, utf8Headers: lines.some((l) => /[^\x00-\x7f]/.test(l)) };
  } catch (e) {
    // An entry swapped for a link after it was listed is refused when it is opened to be read.
    if (e instanceof NotPlainError) throw dataError(e.message);
    throw e instanceof Failure ? e : asFailure(e);
  }
}

/**
 * Read an IMA message (a tar stream) into spooled parts; the tar order is not
 * the MIME order, so nothing streams straight through. `release(offset)` is
 * told each time no byte of the input before offset is held any more (see
 * InOrderReader).
 */
export async function spoolIma(
  input: Readable,
  store: SpoolStore,
  limits: MessageLimits = DEFAULT_LIMITS,
  release?: (offset: number) => void,
): Promise<MessageParts> {
  let headers: Headers | undefined;
  let body: Part | undefined;
  let bodyHtml: Part | undefined;
  const attachments: (Part & { name: string })[] = [];
  for await (const e of readMessage(input, limits)) {
    if (e.kind === 'headers') {
      headers = e.headers;
      continue;
    }
    const part = await store.add(e.stream, undefined, release && ((n) => release(e.offset + n)));
    if (e.kind === 'body') body = part;
    else if (e.kind === 'body.html') bodyHtml = part;
    else attachments.push({ name: e.name, ...part });
  }
  return { headers: headers!, body, bodyHtml, attachments };
}

/**
 * A link, FIFO or device among a message directory's entries (or in place of
 * attachments/) breaks ima-message(5): the message is bad, nothing on this
 * machine is in trouble, so it is a data error, not a temporary one. The
 * error names the entry below the mailbox, here the directory's parent.
 */
function notPlain(box: Mailbox, e: NotPlainError): Failure {
  return dataError(`${box.dir}/${e.message}`);
}

/** A stored message directory (a mailbox's new/ID or cur/ID) as parts read from its files. */
export async function messageDirParts(dir: string, limits: MessageLimits = DEFAULT_LIMITS): Promise<MessageParts> {
  let entries;
  const box = new Mailbox(dirname(dir));
  try {
    entries = await box.entries(dir);
  } catch (e) {
    if (e instanceof MessageError) throw dataError(`${dir}: ${e.message}`);
    if (e instanceof NotPlainError) throw notPlain(box, e);
    if ((e as NodeJS.ErrnoException).code) throw e;
    throw dataError(`${dir}: ${(e as Error).message}`);
  }
  const head = entries[0];
  if (head.size > limits.maxHeaderBytes) throw dataError(`${dir}: headers of ${head.size} bytes exceed the limit of ${limits.maxHeaderBytes}`);
  let headers: Headers;
  try {
    headers = parseHeaders(await box.readEntry(dir, 'headers'));
  } catch (e) {
    if (e instanceof MessageError) throw dataError(`${dir}: ${e.message}`);
    if (e instanceof NotPlainError) throw notPlain(box, e);
    throw e;
  }
  const part = (path: string) => entries.find((e) => e.path === path);
  const attachments = entries.filter((e) => e.path.startsWith('attachments/')).map((e) => ({ ...e, name: e.path.slice('attachments/'.length) }));
  return { headers, body: part('body'), bodyHtml: part('body.html'), attachments };
}

/** IMA tar in, MIME out (`out` is ended). Returns the IMA headers. */
export async function imaToMime(input: Readable, out: Writable, opts: ImaToMimeOptions & { limits?: MessageLimits; spoolDir?: string } = {}): Promise<Headers> {
  const store = new SpoolStore({ dir: opts.spoolDir });
  try {
    const parts = await spoolIma(input, store, opts.limits);
    await writeMime(parts, out, opts);
    return parts.headers;
  } finally {
    await store.dispose();
  }
}
