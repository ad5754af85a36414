// The streaming reader: yields the entries of an IMA message one at a time,
// each checked against ima-message(5) before the caller sees it. Memory stays
// bounded whatever the message size: entry data is a stream the caller
// consumes (or leaves, and the reader drains it).
import { once } from 'node:events';
import { PassThrough, Readable, Transform, type TransformCallback, type Writable } from 'node:stream';
import type tar from 'tar-stream';
import { Failure } from '../failure.js';
import { type Headers, parseHeaders } from './headers.js';
import { DEFAULT_LIMITS, type MessageLimits, MessageError } from './limits.js';
import { ATTACHMENTS, type EntryKind, classifyPath } from './names.js';
import { chunksOf, drained, joinStreams } from '../streams.js';
import { type SeenEntry, TarGuard, TarWalker } from './tar-guard.js';
import { Utf8Checker } from './utf8.js';

export type Entry =
  | { kind: 'headers'; path: 'headers'; headers: Headers; raw: Buffer; size: number }
  | {
      kind: 'body' | 'body.html' | 'attachment';
      path: string;
      name: string;
      size: number;
      stream: Readable;
      /** Where the entry's data starts in the input (byte offset). */
      offset: number;
      /** All of the data, checked, when the reader has it in hand (a small message read whole): the stream gives the same bytes. */
      data?: Buffer;
    };

/** Fails the stream on bytes that are not UTF-8 (body and body.html are text). */
class Utf8Check extends Transform {
  private readonly utf8 = new Utf8Checker();
  constructor(private readonly path: string) {
    super();
  }
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback) {
    if (this.utf8.check(chunk)) cb(null, chunk);
    else cb(new MessageError(`${this.path}: not valid UTF-8`));
  }
  override _flush(cb: TransformCallback) {
    if (this.utf8.end()) cb();
    else cb(new MessageError(`${this.path}: not valid UTF-8 (truncated character)`));
  }
}

async function readAll(stream: AsyncIterable<unknown>, max: number, what: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of stream) {
    const chunk = c as Buffer;
    n += chunk.length;
    if (n > max) throw new MessageError(`${what} larger than the limit of ${max} bytes`);
    parts.push(chunk);
  }
  return Buffer.concat(parts);
}

/** Map tar-stream's own errors to a message error; keep ours and I/O errors as they are. */
function explain(err: unknown): Error {
  if (err instanceof Failure) return err;
  const e = err as NodeJS.ErrnoException;
  if (e?.code && e.code !== 'ERR_STREAM_PREMATURE_CLOSE') return e;
  const m = String(e?.message ?? err);
  if (/Unexpected end|premature/i.test(m)) return new MessageError('tar: truncated archive');
  return new MessageError(`tar: ${m}`);
}

/** What the reader remembers across entries to check their order and names. */
interface Seen {
  /** Entries so far, this one included: 1 is the first. */
  index: number;
  names: Set<string>;
  attachmentsDir: boolean;
}

interface Checked {
  kind: EntryKind;
  name: string;
  path: string;
  size: number;
}

/**
 * Check one tar entry's header against what the guard saw on the wire and
 * against ima-message(5)'s rules for names and order. Undefined for the
 * attachments directory, which is skipped.
 */
function checkEntry(h: tar.Header, guard: { seen: SeenEntry[] }, seen: Seen, limits: MessageLimits): Checked | undefined {
  const expected = guard.seen[seen.index];
  seen.index++;
  if (!expected || expected.size !== h.size || (expected.type === 'directory') !== (h.type === 'directory')) {
    throw new MessageError('tar: inconsistent entry header');
  }
  if (h.type === 'directory') {
    // GNU tar adds the directory when told to archive "attachments": harmless, skipped once.
    if (h.name !== ATTACHMENTS || seen.attachmentsDir || seen.index === 1)
      throw new MessageError(`entry ${JSON.stringify(h.name)}: directories are not allowed`);
    seen.attachmentsDir = true;
    return undefined;
  }
  if (h.type !== 'file') throw new MessageError(`entry ${JSON.stringify(h.name)}: only regular files are allowed`);
  if (h.name.includes('\uFFFD')) throw new MessageError(`entry ${JSON.stringify(h.name)}: name is not valid UTF-8`);
  const { kind, name } = classifyPath(h.name);
  const path = kind === 'attachment' ? ATTACHMENTS + name : kind;
  if (seen.index === 1 && kind !== 'headers') throw new MessageError('the first entry must be "headers"');
  if (seen.names.has(path)) throw new MessageError(`entry ${JSON.stringify(path)} appears twice`);
  seen.names.add(path);
  const size = h.size ?? 0;
  if (kind === 'headers') {
    if (seen.index !== 1) throw new MessageError('"headers" must be the first entry');
    if (size > limits.maxHeaderBytes) throw new MessageError(`headers of ${size} bytes exceed the limit of ${limits.maxHeaderBytes}`);
  }
  return { kind, name, path, size };
}

/** After the caller is done with an entry's stream: read what it left, so the next entry can come. */
async function drainEntry(stream: Readable, path: string, failed: Error | undefined): Promise<void> {
  if (stream.readableEnded) return;
  if (stream.destroyed) throw failed ?? new MessageError(`${path}: entry stream was abandoned`);
  stream.resume();
  await once(stream, 'end');
}

const BLOCK = 512;
const USTAR = Buffer.from('ustar\x0000', 'latin1');
const HEADERS_NAME = Buffer.from('headers\0', 'latin1');

/** A tar header's checksum as tar-stream computes it: every byte, the checksum field counted as spaces. */
function checksum(block: Buffer): number {
  let sum = 8 * 32;
  for (let i = 0; i < 148; i++) sum += block[i];
  for (let i = 156; i < BLOCK; i++) sum += block[i];
  return sum;
}

/** A plain octal field (digits, then NUL or space); undefined for anything else. */
function plainOctal(block: Buffer, offset: number, length: number): number | undefined {
  const text = block.toString('latin1', offset, offset + length).replace(/[\0 ]+$/, '');
  return /^[0-7]{1,11}$/.test(text) ? parseInt(text, 8) : undefined;
}

/**
 * The headers of a message from its first bytes, without a tar parser, when
 * they are laid out as the canonical writer lays them out: a ustar header
 * named "headers" (no pax or long-name entry, no prefix), a good checksum,
 * the whole entry within `head`. Undefined for any other layout: then
 * readMessage decides, with its checks and its words. Throws a
 * MessageError for headers that break ima-message(5), as readMessage would.
 */
export function plainHeaders(head: Buffer, limits: MessageLimits = DEFAULT_LIMITS): Headers | undefined {
  if (head.length < BLOCK) return undefined;
  const block = head.subarray(0, BLOCK);
  if (!block.subarray(0, HEADERS_NAME.length).equals(HEADERS_NAME) || block[156] !== 0x30) return undefined;
  if (!block.subarray(257, 265).equals(USTAR) || block[345] !== 0) return undefined;
  const size = plainOctal(block, 124, 12);
  if (size === undefined || size > limits.maxHeaderBytes || BLOCK + size > head.length) return undefined;
  if (plainOctal(block, 148, 8) !== checksum(block)) return undefined;
  return parseHeaders(head.subarray(BLOCK, BLOCK + size));
}

/** Given to the parser when the reader leaves early: one error made once, not one with a stack trace per message. */
const STOPPED = new Error('the reader stopped early');

/** Where a reader stopped and tar-stream takes over: at an entry's header, with what the walk and the checks saw before it. */
interface Midway {
  walker: TarWalker;
  seen: Seen;
}

/** readMessage through tar-stream: any layout, any size, streamed; from the start of the archive or from `midway`. */
async function* readStreamed(input: Readable, limits: MessageLimits, midway?: Midway): AsyncGenerator<Entry> {
  // Loaded here, not with this module: the canonical layout never gets this
  // far, and tar-stream with its streams is a quarter of the code a spawned
  // stage would otherwise read at every start.
  const { default: tarStream } = await import('tar-stream');
  const guard = new TarGuard(limits, midway?.walker);
  const extract = tarStream.extract();
  let failed: Error | undefined;
  // The guard's verdict on the end of the input (end blocks, padding) may
  // come after tar-stream's last entry: the message is whole only once the
  // pipeline has finished.
  let unwatch = () => {};
  const piped = new Promise<void>((res) => {
    unwatch = joinStreams([input, guard, extract as unknown as Writable], (err) =>
      // On the next tick, as pipeline does: an error the reader throws itself comes first.
      process.nextTick(() => {
        if (err && !failed) failed = explain(err);
        res();
      }),
    );
  });
  const seen: Seen = midway?.seen ?? { index: 0, names: new Set(), attachmentsDir: false };
  let complete = false;
  // Iterated by hand: leaving a for-await early would destroy the parser with a new error (and its stack trace) each time.
  const entries = extract[Symbol.asyncIterator]();
  try {
    for (let next = await entries.next(); !next.done; next = await entries.next()) {
      const entry = next.value;
      const checked = checkEntry(entry.header, guard, seen, limits);
      if (!checked) {
        entry.resume();
        continue;
      }
      const { kind, name, path, size } = checked;
      if (kind === 'headers') {
        const raw = await readAll(entry, limits.maxHeaderBytes, 'headers');
        yield { kind, path: 'headers', headers: parseHeaders(raw), raw, size };
        continue;
      }
      // tar-stream's entries are streamx streams; callers get a Node stream.
      const stream: Readable = entry.pipe(kind === 'attachment' ? new PassThrough() : new Utf8Check(path));
      entry.on('error', (e: Error) => stream.destroy(failed ?? explain(e)));
      // Where the data starts in the input (after the entry's 512-byte header): a reader of a file can release what lies before.
      const offset = (entry as unknown as { offset: number }).offset + 512;
      yield { kind, path, name, size, stream, offset };
      await drainEntry(stream, path, failed);
    }
    complete = true;
    await piped;
    if (failed) throw failed;
    if (seen.index === 0) throw new MessageError('empty archive: no "headers" entry');
  } catch (e) {
    // The guard's reason beats tar-stream's echo of it.
    throw failed ?? explain(e);
  } finally {
    // Also when the caller stops early (it wanted only the headers): stop reading.
    if (!complete) {
      unwatch();
      input.destroy();
      // The input may have ended already and the guard be about to judge it: nobody listens now.
      guard.on('error', () => {});
      guard.destroy();
      extract.on('error', () => {});
      extract.destroy(STOPPED);
    }
  }
}

/**
 * Read a message entry by entry. The first entry is always the parsed
 * headers. The caller must consume or ignore each entry's stream before
 * asking for the next; an ignored stream is drained here.
 *
 * A message that comes whole in its first chunk, laid out as the canonical
 * writer lays it out (ustar headers, no pax or long-name entries), is read
 * from that chunk directly: the guard walks it and every entry passes the
 * same checks, but no tar parser and no stream per entry is made (most of
 * the CPU a small message cost). Anything else is read as it streams
 * (readPlainStreamed), through tar-stream from its first header that is
 * not plain.
 */
export async function* readMessage(input: Readable, limits: MessageLimits = DEFAULT_LIMITS): AsyncGenerator<Entry> {
  let head: Buffer | undefined;
  try {
    head = await firstChunk(input);
  } catch (e) {
    throw explain(e);
  }
  const guard = new TarWalker(limits);
  let plain: PlainEntry[] | undefined;
  try {
    plain = head && wholeAndPlain(head, guard) ? plainLayout(head) : undefined;
  } catch (e) {
    input.destroy();
    throw e;
  }
  if (!head) {
    yield* readStreamed(input, limits); // nothing came: tar-stream and the guard say what is missing
    return;
  }
  if (!plain) {
    // Not whole in its first chunk, or not plain: read as it streams, tar-stream taking over at a header that is not plain.
    yield* readPlainStreamed(input, head, limits);
    return;
  }
  let complete = false;
  try {
    const seen: Seen = { index: 0, names: new Set(), attachmentsDir: false };
    for (const p of plain) {
      const { kind, name, path, size } = checkEntry(p.header, guard, seen, limits)!;
      if (kind === 'headers') {
        yield { kind, path: 'headers', headers: parseHeaders(p.data), raw: p.data, size };
        continue;
      }
      if (kind !== 'attachment') checkUtf8(path, p.data);
      yield dataEntry(kind, path, name, p.data, p.offset);
    }
    // What follows the end blocks (padding) still passes the guard, up to the input's end.
    try {
      for await (const chunk of chunksOf(input)) guard.inspect(chunk);
    } catch (e) {
      throw explain(e);
    }
    complete = true;
    if (seen.index === 0) throw new MessageError('empty archive: no "headers" entry');
  } finally {
    // Also when the caller stops early (it wanted only the headers): stop reading.
    if (!complete) input.destroy();
  }
}

/**
 * readMessage for a message it cannot read from its first chunk alone (not
 * whole there, or not plain). While every header is plain (as the canonical writer makes them), the
 * entries are read here: their data is handed on as slices of the input's
 * chunks, walked by the guard and checked on the way. tar-stream's parser
 * and streams cost about 1 ms of CPU per MiB, and a message is read three
 * times on its way into a mailbox. At the first header that is not plain
 * (pax, a long name, a directory: GNU tar's layouts) tar-stream takes over
 * from that header, with the walk and the checks so far.
 */
async function* readPlainStreamed(input: Readable, head: Buffer, limits: MessageLimits): AsyncGenerator<Entry> {
  const walker = new TarWalker(limits);
  const cursor = new Cursor(head, input);
  const seen: Seen = { index: 0, names: new Set(), attachmentsDir: false };
  let handedOver = false;
  let complete = false;
  try {
    for (;;) {
      const block = await cursor.take(BLOCK);
      if (!block) return truncated(walker);
      const header = plainHeader(block);
      if (!header && !block.equals(ZERO_BLOCK)) {
        handedOver = true;
        yield* readStreamed(cursor.remaining(block), limits, { walker, seen });
        return;
      }
      walker.inspect(block);
      if (!header) {
        // The first end block: what follows (the second, padding) is the guard's to judge, to the input's end.
        for (let p = await cursor.piece(BLOCK * 32); p; p = await cursor.piece(BLOCK * 32)) walker.inspect(p);
        walker.finish();
        break;
      }
      const { kind, name, path, size } = checkEntry(header, walker, seen, limits)!;
      const padding = Math.ceil(size / BLOCK) * BLOCK - size;
      if (kind === 'headers') {
        const data = await cursor.take(size + padding);
        if (!data) return truncated(walker);
        walker.inspect(data);
        const raw = Buffer.from(data.subarray(0, size));
        yield { kind, path: 'headers', headers: parseHeaders(raw), raw, size };
        continue;
      }
      const offset = cursor.position;
      const stream = new PassThrough();
      const pumping = pumpEntry(cursor, walker, stream, { path, size, padding, text: kind !== 'attachment' });
      pumping.catch(() => {}); // awaited below, once the caller is back
      yield { kind, path, name, size, stream, offset };
      // As drainEntry does for tar-stream: what the caller left unread is read now; a stream it destroyed was abandoned.
      if (!stream.destroyed) stream.resume();
      if (!(await pumping)) throw new MessageError(`${path}: entry stream was abandoned`);
    }
    complete = true;
    if (seen.index === 0) throw new MessageError('empty archive: no "headers" entry');
  } catch (e) {
    throw explain(e);
  } finally {
    // Also when the caller stops early (it wanted only the headers): stop reading. tar-stream's reader stops its own.
    if (!complete && !handedOver) {
      input.destroy();
      await cursor.close();
    }
  }
}

/** The input ended before the archive did: the guard's words. */
function truncated(walker: TarWalker): never {
  walker.finish();
  throw new MessageError('tar: truncated archive');
}

/**
 * Pass an entry's data from the input into its stream, walked and checked
 * on the way, then its padding: true once all of it is read. False when
 * the caller destroyed the stream first (the rest is not read: the input
 * is out of step, and the read ends). The stream errs as the read does.
 */
async function pumpEntry(
  cursor: Cursor,
  walker: TarWalker,
  stream: PassThrough,
  entry: { path: string; size: number; padding: number; text: boolean },
): Promise<boolean> {
  const utf8 = entry.text ? new Utf8Checker() : undefined;
  try {
    for (let left = entry.size; left > 0;) {
      const piece = await cursor.piece(left);
      if (!piece) return truncated(walker);
      walker.inspect(piece);
      left -= piece.length;
      if (utf8 && !utf8.check(piece)) throw new MessageError(`${entry.path}: not valid UTF-8`);
      if (stream.destroyed) return false;
      if (!stream.write(piece)) await drained(stream);
    }
    if (utf8 && !utf8.end()) throw new MessageError(`${entry.path}: not valid UTF-8 (truncated character)`);
    for (let left = entry.padding; left > 0;) {
      const piece = await cursor.piece(left);
      if (!piece) return truncated(walker);
      walker.inspect(piece);
      left -= piece.length;
    }
    stream.end();
    return true;
  } catch (e) {
    stream.destroy(explain(e));
    throw e;
  }
}

/**
 * The input's bytes in order, a slice at a time: the first chunk, then the
 * rest as it comes (chunksOf: an input error or a premature close is thrown).
 */
class Cursor {
  private chunk: Buffer;
  private at = 0;
  /** Bytes taken so far: where the next one lies in the input. */
  position = 0;
  private readonly rest: AsyncGenerator<Buffer>;

  constructor(head: Buffer, input: Readable) {
    this.chunk = head;
    this.rest = chunksOf(input);
  }

  /** The next bytes, at most max (no more than the current chunk holds); undefined at the end of the input. */
  async piece(max: number): Promise<Buffer | undefined> {
    while (this.at === this.chunk.length) {
      const r = await this.rest.next();
      if (r.done) return undefined;
      this.chunk = r.value;
      this.at = 0;
    }
    const piece = this.chunk.subarray(this.at, Math.min(this.chunk.length, this.at + max));
    this.at += piece.length;
    this.position += piece.length;
    return piece;
  }

  /** Exactly n bytes, joined when they span chunks; undefined when the input ends first. */
  async take(n: number): Promise<Buffer | undefined> {
    const first = await this.piece(n);
    if (!first || first.length === n) return first;
    const parts = [first];
    for (let have = first.length; have < n;) {
      const p = await this.piece(n - have);
      if (!p) return undefined;
      parts.push(p);
      have += p.length;
    }
    return Buffer.concat(parts, n);
  }

  /** What is not yet read, `taken` first (a header it gave back), as a stream for tar-stream. */
  remaining(taken: Buffer): Readable {
    const unread = this.chunk.subarray(this.at);
    this.at = this.chunk.length;
    const rest = this.rest;
    const stream = Readable.from(
      (async function* () {
        yield taken;
        if (unread.length) yield unread;
        yield* rest;
      })(),
      { objectMode: false },
    );
    // As for the input itself (firstChunk): its errors are the reader's to report, and may come after it stopped listening.
    return stream.on('error', ignore);
  }

  /** Stop reading the input. */
  async close(): Promise<void> {
    await this.rest.return(undefined);
  }
}

const ignore = () => {};
const prematureClose = () => Object.assign(new Error('Premature close'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });

/** The input's first chunk (the input paused after it), or undefined when it ends without one; rejects at its error or premature close. */
function firstChunk(input: Readable): Promise<Buffer | undefined> {
  if (input.readableEnded) return Promise.resolve(undefined);
  if (input.destroyed) return Promise.reject(input.errored ?? prematureClose());
  return new Promise((resolve, reject) => {
    const settle = (then: () => void) => {
      input.off('data', onData).off('end', onEnd).off('error', onError).off('close', onClose);
      then();
    };
    const onData = (chunk: Buffer | string) => {
      input.pause();
      // From now on an error of the input is the reader's to report: while nothing else watches it (the caller busy
      // with an entry) it stays in the stream (errored) for chunksOf to throw, and the streamed reader's pipeline,
      // which destroys the input with its own error, may have stopped watching before that error is raised.
      input.on('error', ignore);
      settle(() => resolve(typeof chunk === 'string' ? Buffer.from(chunk) : chunk));
    };
    const onEnd = () => settle(() => resolve(undefined));
    const onError = (e: Error) => settle(() => reject(e));
    const onClose = () => settle(() => reject(prematureClose()));
    input.on('data', onData).on('end', onEnd).on('error', onError).on('close', onClose);
    // A stream paused before it came here flows too (as pipe() would make it).
    input.resume();
  });
}

/** The guard's walk of a first chunk, true when it holds the whole archive; a broken rule throws as the streamed reader would. */
function wholeAndPlain(head: Buffer, guard: TarWalker): boolean {
  guard.inspect(head);
  return guard.ended;
}

interface PlainEntry {
  header: tar.Header;
  data: Buffer;
  /** Where data starts in the input. */
  offset: number;
}

/**
 * The entries of a whole archive in hand when every header is a plain ustar
 * header of a regular file (no prefix, pax or long name, a good checksum, a
 * plain octal size, a name not ending in "/"); undefined for anything else.
 * The guard has walked the same bytes: sizes and the end are its.
 */
function plainLayout(tar: Buffer): PlainEntry[] | undefined {
  const out: PlainEntry[] = [];
  for (let off = 0; off + BLOCK <= tar.length;) {
    const block = tar.subarray(off, off + BLOCK);
    if (block[0] === 0 && block.equals(ZERO_BLOCK)) return out;
    const header = plainHeader(block);
    if (!header) return undefined;
    const at = off + BLOCK;
    out.push({ header, data: tar.subarray(at, at + header.size), offset: at });
    off = at + Math.ceil(header.size / BLOCK) * BLOCK;
  }
  return undefined;
}

/**
 * A plain ustar header of a regular file (no prefix, pax or long name, a
 * good checksum, a plain octal size, a name not ending in "/"), as the
 * canonical writer makes them; undefined for any other block.
 */
function plainHeader(block: Buffer): tar.Header | undefined {
  if (block[156] !== 0x30 || !block.subarray(257, 265).equals(USTAR) || block[345] !== 0) return undefined;
  const size = plainOctal(block, 124, 12);
  if (size === undefined || plainOctal(block, 148, 8) !== checksum(block)) return undefined;
  const end = block.indexOf(0);
  const name = block.toString('utf8', 0, end === -1 || end > 100 ? 100 : end);
  if (name.endsWith('/')) return undefined;
  return { name, size, type: 'file' } as tar.Header;
}

const ZERO_BLOCK = Buffer.alloc(BLOCK);

function checkUtf8(path: string, data: Buffer): void {
  const utf8 = new Utf8Checker();
  if (!utf8.check(data)) throw new MessageError(`${path}: not valid UTF-8`);
  if (!utf8.end()) throw new MessageError(`${path}: not valid UTF-8 (truncated character)`);
}

/** An entry whose data is in hand; its stream is made only for a caller that asks for one. */
function dataEntry(kind: 'body' | 'body.html' | 'attachment', path: string, name: string, data: Buffer, offset: number): Entry {
  let stream: Readable | undefined;
  return {
    kind,
    path,
    name,
    size: data.length,
    data,
    offset,
    get stream() {
      return (stream ??= Readable.from([data], { objectMode: false }));
    },
  };
}
