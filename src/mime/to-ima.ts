// MIME -> IMA (ima-mime(7)). mailparser's streaming MailParser splits the
// message; every leaf part comes out as a stream and is spooled as it comes
// (tar needs each size before the bytes), so memory stays flat whatever the
// part sizes. The first text/plain becomes body, the first text/html
// body.html, every other leaf an attachment.
import { isUtf8 } from 'node:buffer';
import { createHash } from 'node:crypto';
import { Readable, Transform, type TransformCallback, type Writable, pipeline } from 'node:stream';
import FlowedDecoder from '@zone-eu/mailsplit/lib/flowed-decoder.js';
import { decode as decodeCharset } from 'libmime/lib/charset';
import { type AttachmentStream, MailParser, type StructuredHeader } from 'mailparser';
import { Failure, asFailure, dataError } from '../failure.js';
import { type Headers, type MessageParts, type Part, writeMessage } from '../message/index.js';
import { BufferPool, SpoolStore } from '../spool.js';
import { chunksOf, joinStreams } from '../streams.js';
import { CONTENT_IDS, type LegacyHeader, legacyHeaders, toImaHeaders } from './headers.js';
import { imaIdOfDigest, messageIds } from './ids.js';
import { AttachmentNames, formatContentIds } from './names.js';
import { Base64Decoder, decodedSize } from './decode.js';
import { HeaderSectionEnd } from './section.js';
import { fastBodies } from './split.js';
import { CrlfToLf, Utf8Validator, charsetDecoder, lfTextOf } from './text.js';

export interface MimeLimits {
  /** Bytes of the whole legacy message. */
  maxMessageBytes: number;
  /** Bytes of one part's header block, and of the IMA headers made from the message's. */
  maxHeaderBytes: number;
  /** MIME parts (leaves and multiparts). */
  maxParts: number;
  /** Multipart nesting. */
  maxDepth: number;
}

/** Bytes of the chunks a program best reads its input in (see MimeToImaOptions.inputChunks). */
export const INPUT_CHUNK = 256 * 1024;

export const MIME_LIMITS: Readonly<MimeLimits> = Object.freeze({
  maxMessageBytes: 2 * 1024 ** 3,
  maxHeaderBytes: 64 * 1024,
  maxParts: 1000,
  maxDepth: 20,
});

export interface MimeToImaOptions {
  limits?: MimeLimits;
  /** Where spooled parts go (default: the system's temporary directory). */
  spoolDir?: string;
  /** Bytes of parts kept in memory before spooling to a file. */
  spoolMemory?: number;
  /** The pool the input's chunks are lent from (pooledReader()), to hand back those it is done with. */
  inputChunks?: BufferPool;
}

/** An IMA message made from a legacy one: its parts are spooled; dispose() when done. */
export interface ConvertedMessage extends MessageParts {
  headers: Headers;
  /** Chunks of spooled parts come from here: write the message through handingBack() to a file or stdout. */
  readBuffers: BufferPool;
  dispose(): Promise<void>;
}

/**
 * Counts the bytes against the limit, hashes them (CR removed) for a message
 * that turns out to have no Message-ID, and ends a header section run into
 * the text (section.ts).
 */
class Meter extends Transform {
  private bytes = 0;
  private hash: ReturnType<typeof createHash> | undefined = createHash('sha256');
  // After the digest: the empty line it may put in is not the sender's.
  private readonly section: HeaderSectionEnd;
  constructor(
    private readonly limit: number,
    maxHeaderBytes: number,
  ) {
    super();
    this.section = new HeaderSectionEnd(maxHeaderBytes, (c) => this.push(c));
  }
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.limit) return cb(dataError(`message larger than the limit of ${this.limit} bytes (max_message_bytes)`));
    if (this.hash) {
      let from = 0;
      for (let cr = chunk.indexOf(13); cr !== -1; cr = chunk.indexOf(13, from)) {
        this.hash.update(chunk.subarray(from, cr));
        from = cr + 1;
      }
      this.hash.update(chunk.subarray(from));
    }
    this.section.take(chunk);
    cb();
  }
  override _flush(cb: TransformCallback): void {
    this.section.end();
    cb();
  }
  /** Bytes read so far. */
  get size(): number {
    return this.bytes;
  }
  stopHashing(): void {
    this.hash = undefined;
  }
  digest(): string {
    return this.hash!.digest('hex');
  }
}

/** A parser error as a named failure: limits by their config key, the rest "bad MIME". */
function explain(err: unknown, limits: MimeLimits): Failure {
  if (err instanceof Failure) return err;
  const e = err as NodeJS.ErrnoException;
  if (e?.code === 'EMAXLEN') {
    if (/header/i.test(e.message)) return dataError(`a MIME header block is larger than the limit of ${limits.maxHeaderBytes} bytes (max_header_bytes)`);
    return dataError(`more than ${limits.maxParts} MIME parts (max_parts)`);
  }
  if (e?.syscall || (e?.code && /^E[A-Z]+$/.test(e.code))) return asFailure(e);
  return dataError(`bad MIME: ${e?.message ?? String(err)}`);
}

const PART_HEADERS = new Set(['content-type', 'content-disposition', 'content-id']);

/** mailsplit's ChunkedPassthrough (lib/chunked-passthrough.js): what it holds, and the size it gathers to. */
interface Rechunker extends Transform {
  buffer: Buffer;
  chunkSize: number;
}

/** mailsplit's MIME node, as far as the parser's createNode() reads it. */
interface SplitNode {
  encoding?: string;
  getDecoder(): Transform;
}

/**
 * The parser's hot loops, replaced by equivalents that work on large Buffers
 * (split.ts, decode.ts; the same bytes out, tested against the library's):
 * plain body lines pass the splitter as one slice, base64 is decoded natively.
 */
function useFastPaths(parser: MailParser, decoded: BufferPool, input: BufferPool | undefined): void {
  const p = parser as unknown as {
    splitter: Transform;
    chunkedPassthrough: Rechunker;
    createNode(node: SplitNode): unknown;
    processHeaders(lines: { key: string }[] | undefined): unknown;
  };
  fastBodies(p.splitter, input);
  // Both hand on objects (a body slice of up to a whole input chunk each), and a readable side in object mode
  // queues 16 of them: megabytes held long enough to outlive a young-generation collection, freed only by a
  // full one. One at a time keeps the chunks short-lived; the parser reads them one at a time anyway.
  for (const s of [p.splitter, p.chunkedPassthrough]) (s as unknown as { _readableState: { highWaterMark: number } })._readableState.highWaterMark = 1;
  // mailparser decodes every header of every part (addresses, dates, encoded words); only these are read
  // (the part's type and parameters, disposition, content-id): the message's own headers are ours to map.
  const processHeaders = p.processHeaders;
  p.processHeaders = (lines) =>
    processHeaders.call(
      parser,
      lines?.filter((l) => PART_HEADERS.has(l.key)),
    );
  // mailsplit's ChunkedPassthrough gathers small writes into 64 KiB by copying, also a chunk that is large already: pass
  // that on as it is, after what was gathered. Large: half of that or more, as a body slice of a 64 KiB input chunk is
  // (its last line is held back, split.ts), which came after a line of the chunk before: with 64 KiB and nothing
  // gathered as the bar, every body byte of a text message was copied once more, 1.2 MB per MB.
  const rechunk = p.chunkedPassthrough._transform;
  p.chunkedPassthrough._transform = function (this: Rechunker, chunk: Buffer, encoding: BufferEncoding, cb: TransformCallback) {
    if (chunk.length >= this.chunkSize / 2) {
      if (this.buffer.length) {
        this.push(this.buffer);
        this.buffer = Buffer.alloc(0);
      }
      this.push(chunk);
      return cb();
    }
    rechunk.call(this, chunk, encoding, cb);
  };
  const createNode = p.createNode.bind(parser);
  p.createNode = (node) => {
    // createNode() asks the node for its decoder; the node's headers are parsed by then.
    if (node.encoding === 'base64') node.getDecoder = () => new Base64Decoder(decoded, input);
    return createNode(node);
  };
}

const paramsOf = (a: AttachmentStream) => (a.headers.get('content-type') as StructuredHeader | undefined)?.params ?? {};

/**
 * The type a part's header says, lowercase. mailparser's contentType guesses
 * from the file name when the header says application/octet-stream, so a
 * file named "eml" would come out message/rfc822 and be renamed "eml.eml".
 */
const declaredType = (a: AttachmentStream) => (a.headers.get('content-type') as StructuredHeader | undefined)?.value?.toLowerCase();

/** Read a legacy message into a spooled IMA message. Throws a data Failure (exit 65) for a message it cannot convert. */
export async function readMime(input: Readable, opts: MimeToImaOptions = {}): Promise<ConvertedMessage> {
  const limits = opts.limits ?? MIME_LIMITS;
  const store = new SpoolStore({ memoryBudget: opts.spoolMemory, dir: opts.spoolDir });
  const meter = new Meter(limits.maxMessageBytes, limits.maxHeaderBytes);
  const parser = new MailParser({
    ignoreEmbedded: true, // message/rfc822 stays whole, an attachment NAME.eml
    checksumAlgo: false,
    skipHtmlToText: true,
    skipTextToHtml: true,
    skipTextLinks: true,
    skipImageLinks: true,
    maxHeadSize: limits.maxHeaderBytes,
    maxChildNodes: limits.maxParts,
  });
  // mailparser buffers text parts whole and joins them into one text; with no
  // text types every leaf part comes out as a stream, and the choice of body is ours.
  (parser as unknown as { textTypes: string[] }).textTypes = [];
  // Decoded base64 goes into buffers that the store hands back once it has written them; nothing else holds one.
  const decoded = new BufferPool(decodedSize(INPUT_CHUNK));
  useFastPaths(parser, decoded, opts.inputChunks);
  let legacy: LegacyHeader[] | undefined;
  parser.once('headerLines', (lines: ReadonlyArray<{ key: string; line: string }>) => {
    legacy = legacyHeaders(lines);
    const id = legacy.find((h) => h.key === 'message-id');
    if (id && messageIds(id.value).length) meter.stopHashing();
  });
  let failed: unknown;
  let reading: Readable | undefined;
  joinStreams([input, meter, parser], (err) => {
    if (!err) return;
    failed ??= err;
    // An attachment stream being read when the parser fails would wait for bytes that never come.
    if (reading && !reading.readableEnded) reading.destroy(err);
  });

  const names = new AttachmentNames();
  const attachments: (Part & { name: string })[] = [];
  const contentIds = new Map<string, string>();
  let body: Part | undefined;
  let bodyHtml: Part | undefined;
  let bodyLast = -1;
  let htmlLast = -1;
  try {
    for await (const item of parser as AsyncIterable<AttachmentStream | { type: 'text' }>) {
      if (item.type !== 'attachment') continue;
      const depth = item.partId ? item.partId.split('.').length : 0;
      if (depth > limits.maxDepth) throw dataError(`MIME parts nested deeper than ${limits.maxDepth} levels (max_depth)`);
      reading = item.content;
      const raw = await store.add(item.content, decoded);
      reading = undefined;
      item.release?.();
      const type = (item.contentType ?? 'application/octet-stream').toLowerCase();
      const asBody = !item.filename && item.contentDisposition !== 'attachment';
      // An empty inline text part carries nothing (a composer writes one for a message without any part).
      if (asBody && raw.size === 0 && type.startsWith('text/')) continue;
      if (asBody && type === 'text/plain' && !body) {
        const text = await decodeBody(raw, item, store);
        body = text.part;
        bodyLast = text.last;
        if (text.lossless) continue;
      } else if (asBody && type === 'text/html' && !bodyHtml) {
        const text = await decodeBody(raw, item, store);
        bodyHtml = text.part;
        htmlLast = text.last;
        if (text.lossless) continue;
      }
      const name = names.name(item.filename, declaredType(item) ?? type);
      attachments.push({ name, ...raw });
      const cid = item.cid?.replace(/[\x00-\x1f\x7f]/g, '');
      if (cid) contentIds.set(name, cid);
    }
    if (failed) throw failed;
    if (meter.size === 0) throw dataError('the input is empty: no message');
    // The text of a single-part message ends with a line end (SMTP data always does, and the composer
    // writes one): text alone, without one, gets it, or the way back would add it.
    if (attachments.length === 0 && (body === undefined) !== (bodyHtml === undefined)) {
      if (body) body = endWithNewline(body, bodyLast);
      else bodyHtml = endWithNewline(bodyHtml!, htmlLast);
    }
    if (!legacy) throw dataError('bad MIME: no header section');
    const headers = toImaHeaders(legacy, () => imaIdOfDigest(meter.digest()));
    if (contentIds.size) headers.fields.push({ name: CONTENT_IDS, value: formatContentIds(contentIds) });
    const size = headers.serialize().length;
    if (size > limits.maxHeaderBytes) throw dataError(`headers of ${size} bytes exceed the limit of ${limits.maxHeaderBytes} (max_header_bytes)`);
    return { headers, body, bodyHtml, attachments, readBuffers: store.readBuffers, dispose: () => store.dispose() };
  } catch (e) {
    parser.destroy();
    input.destroy();
    await store.dispose().catch(() => {});
    throw explain(failed ?? e, limits);
  }
}

/**
 * A text part as UTF-8 with LF line ends, from its charset (and format=flowed).
 * Not lossless when the charset is unknown or the bytes are not what it
 * says: the caller keeps the original part as an attachment too.
 */
/** A text part decoded to UTF-8 with LF line ends; `last` is its last byte (-1 when empty). */
interface DecodedText {
  part: Part | undefined;
  lossless: boolean;
  last: number;
}

async function decodeBody(raw: Part, part: AttachmentStream, store: SpoolStore): Promise<DecodedText> {
  const params = paramsOf(part);
  const flowed = part.contentType === 'text/plain' && params.format?.toLowerCase() === 'flowed';
  const source = raw.open();
  if (Buffer.isBuffer(source) && !flowed) return decodeInMemory(source, params.charset);
  const unflow = () => (flowed ? [new FlowedDecoder({ delSp: params.delsp?.toLowerCase() === 'yes' }) as unknown as Transform] : []);
  const { decoder, known } = charsetDecoder(params.charset);
  if (decoder) return decodeStream(source, [...unflow(), decoder], known, store);
  // Text declared UTF-8 or ASCII that turns out not to be UTF-8 is decoded again, as windows-1252 (most such legacy text is).
  const asWindows1252 = () => decodeStream(raw.open(), [...unflow(), charsetDecoder('windows-1252').decoder!], false, store);
  if (!flowed) {
    // Declared UTF-8 or ASCII (or nothing), and spooled: one read checks it and counts what LF line ends make of
    // it; they are made again as it is written, not spooled a second time (a 1 MB body went to disk twice).
    const text = await lfTextOf(source as Readable, store.readBuffers);
    if (!text.utf8) return asWindows1252();
    const part = { size: text.size, open: () => chain(raw.open(), [new CrlfToLf({ loneCr: 'lf', pool: store.readBuffers })]) };
    return { part: text.size > 0 ? part : undefined, lossless: known, last: text.last };
  }
  // Flowed, declared UTF-8 or ASCII (or nothing): taken as it is while checked in the same pass; the first try
  // stays unused if the check fails.
  const check = new Utf8Validator();
  const asIs = await decodeStream(source, [check, ...unflow()], known, store);
  return check.valid ? asIs : asWindows1252();
}

/** Spool a text part through its decoding stages and CRLF -> LF. */
async function decodeStream(source: Buffer | Readable, stages: Transform[], lossless: boolean, store: SpoolStore): Promise<DecodedText> {
  const lineEnds = new CrlfToLf({ loneCr: 'lf' });
  const text = await store.add(chain(source, [...stages, lineEnds]));
  return { part: text.size > 0 ? text : undefined, lossless, last: lineEnds.lastByte };
}

/** The same for a part held in memory, without streams: most text parts are small, and a stream pipeline per part costs more than the decoding. */
function decodeInMemory(raw: Buffer, charset: string | undefined): DecodedText {
  const { decoder, known: declaredKnown } = charsetDecoder(charset);
  let known = declaredKnown;
  let text: string;
  if (decoder) text = decodeCharset(raw, (decoder as unknown as { charset: string }).charset);
  else if (isUtf8(raw)) text = raw.toString('utf8');
  else {
    text = decodeCharset(raw, 'windows-1252');
    known = false;
  }
  const bytes = Buffer.from(text.replace(/\r\n?/g, '\n'));
  return { part: bytes.length ? { size: bytes.length, open: () => bytes } : undefined, lossless: known, last: bytes.length ? bytes[bytes.length - 1] : -1 };
}

/** The part, or the part and an LF after it when `last`, its last byte (known from decoding it: no second read), is not one. */
function endWithNewline(part: Part, last: number): Part {
  if (last === 0x0a) return part;
  const nl = Buffer.from('\n');
  return {
    size: part.size + 1,
    open: () => {
      const d = part.open();
      return Buffer.isBuffer(d)
        ? Buffer.concat([d, nl])
        : (Readable.from(
            (async function* () {
              yield* chunksOf(d);
              yield nl;
            })(),
          ) as Readable);
    },
  };
}

/** Pipe a source through transforms; the last one is read by the caller, errors end it. */
function chain(source: Buffer | Readable, stages: Transform[]): Readable {
  const streams = [Buffer.isBuffer(source) ? [source] : source, ...stages] as unknown as [Readable, ...Transform[]];
  return pipeline(streams, () => {}) as unknown as Readable;
}

/** MIME in, canonical IMA tar out. Returns the IMA headers. */
export async function mimeToIma(input: Readable, out: Writable, opts: MimeToImaOptions = {}): Promise<Headers> {
  const message = await readMime(input, opts);
  try {
    await writeMessage(out, message);
    return message.headers;
  } finally {
    await message.dispose();
  }
}
