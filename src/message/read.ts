// The streaming reader: yields the entries of an IMA message one at a time,
// each checked against ima-message(5) before the caller sees it. Memory stays
// bounded whatever the message size: entry data is a stream the caller
// consumes (or leaves, and the reader drains it).
import { once } from 'node:events';
import { PassThrough, Readable, Transform, type TransformCallback, type Writable } from 'node:stream';
import tar from 'tar-stream';
import { Failure } from '../failure.js';
import { type Headers, parseHeaders } from './headers.js';
import { DEFAULT_LIMITS, type MessageLimits, MessageError } from './limits.js';
import { ATTACHMENTS, type EntryKind, classifyPath } from './names.js';
import { chunksOf, joinStreams } from '../streams.js';
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

/** readMessage through tar-stream: any layout, any size, streamed. */
async function* readStreamed(input: Readable, limits: MessageLimits): AsyncGenerator<Entry> {
  const guard = new TarGuard(limits);
  const extract = tar.extract();
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
  const seen: Seen = { index: 0, names: new Set(), attachmentsDir: false };
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
 * the CPU a small message cost). Anything else goes through tar-stream.
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
  if (!plain) {
    // The first chunk goes back where it came from, for tar-stream to read it again.
    if (head && !input.readableEnded) input.unshift(head);
    yield* readStreamed(head && input.readableEnded ? Readable.from([head], { objectMode: false }) : input, limits);
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
    if (block[156] !== 0x30 || !block.subarray(257, 265).equals(USTAR) || block[345] !== 0) return undefined;
    const size = plainOctal(block, 124, 12);
    if (size === undefined || plainOctal(block, 148, 8) !== checksum(block)) return undefined;
    const end = block.indexOf(0);
    const name = block.toString('utf8', 0, end === -1 || end > 100 ? 100 : end);
    if (name.endsWith('/')) return undefined;
    const at = off + BLOCK;
    out.push({ header: { name, size, type: 'file' } as tar.Header, data: tar.subarray(at, at + size), offset: at });
    off = at + Math.ceil(size / BLOCK) * BLOCK;
  }
  return undefined;
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
