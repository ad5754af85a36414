// mailsplit's MessageSplitter looks at every line of the message: a JS loop
// over each byte for the line end, a Buffer and an object per line. In the
// body of a leaf part only a line starting with "-" (or CR then "-") can end
// it, being a boundary delimiter, so the lines before the first such line
// are body whatever they hold. This hands them to the parser as one slice
// and leaves the rest of the chunk (from the last whole line before such a
// line) to the splitter, exactly as if the input had been cut there: a
// base64 attachment then costs two native searches per 64 KiB, not a
// thousand lines.
import type { Transform, TransformCallback } from 'node:stream';
import { type BufferPool, ownCopy } from '../spool.js';

/** What this needs of mailsplit's splitter (lib/message-splitter.js); its state constants are HEAD = 1, BODY = 2. */
interface Splitter extends Transform {
  state: number;
  node: { multipart?: unknown; encoding?: string | false };
  lineChunks: Buffer[];
  lineLength: number;
  pendingLineTruncated: boolean;
  hasFailed: boolean;
}

/** Bytes held back from the splitter at most (see fastBodies). */
const HELD_MAX = 64 * 1024;
const HEAD = 1;
const BODY = 2;
const LF = 0x0a;
const CR = 0x0d;
const DASH = 0x2d;

/**
 * The number of bytes at the start of `chunk` that are whole body lines no
 * delimiter can be among, keeping back the line before the first line that
 * could be one (its line end belongs to the delimiter) or before the
 * unfinished last line, with the empty lines before it; 0 when there are none.
 */
export function plainBodyLength(chunk: Buffer): number {
  if (chunk[0] === DASH || (chunk[0] === CR && chunk[1] === DASH)) return 0;
  let limit = chunk.lastIndexOf(LF) + 1;
  for (const start of ['\n-', '\n\r-']) {
    const at = chunk.indexOf(start);
    if (at !== -1 && at + 1 < limit) limit = at + 1;
  }
  // Keep back the line before that one, and any empty lines before it: mailsplit trims the line end
  // before a delimiter from the body only when the body slice it holds has more than that line end.
  let start = limit;
  do {
    if (start < 2) return 0;
    start = chunk.lastIndexOf(LF, start - 2) + 1;
  } while (start > 0 && (chunk[start] === LF || (chunk[start] === CR && chunk[start + 1] === LF)));
  return start;
}

/**
 * The offset in chunk just past the empty line that ends the header block the
 * splitter is in, or -1 when it is not in chunk. The line the chunk starts in
 * began in the splitter (an unfinished line it holds): it is empty when that
 * is nothing or a lone CR and the chunk starts with the line end.
 */
function afterHeaderBlock(t: Splitter, chunk: Buffer): number {
  if (t.lineLength === 0 && chunk[0] === LF) return 1;
  if (t.lineLength === 0 && chunk[0] === CR && chunk[1] === LF) return 2;
  if (t.lineLength === 1 && Buffer.concat(t.lineChunks)[0] === CR && chunk[0] === LF) return 1;
  const lf = chunk.indexOf('\n\n');
  const crlf = chunk.indexOf('\n\r\n');
  if (lf === -1) return crlf === -1 ? -1 : crlf + 3;
  return crlf === -1 || lf < crlf ? lf + 2 : crlf + 3;
}

/** Whether the start of a line (up to its line end) could be a delimiter line, as in plainBodyLength. */
function couldBeDelimiter(line: Buffer): boolean {
  return line[0] === DASH || (line[0] === CR && line[1] === DASH) || line.indexOf('\n-') !== -1 || line.indexOf('\n\r-') !== -1;
}

/**
 * Make `splitter` pass the plain body lines of a leaf part straight through
 * (the same output, far less work). The splitter keeps the end of every
 * chunk pending (an unfinished line, and the line end before it, which may
 * belong to a delimiter that follows); with the rest of its line it goes out
 * first when that line cannot be a delimiter, and is taken from the splitter
 * only then. Nothing is copied but that one line.
 *
 * That end of a chunk is held here instead of being handed to the splitter
 * at once, which made three closures and ran its byte loop for those two
 * lines at every chunk (16 times a megabyte). A chunk that does not settle
 * what the held lines are goes to the splitter after them, as if the input
 * had been cut there; so does what is held when the input ends. With the
 * cut after a header block (below), V8 compiled that loop 3 times over 200
 * messages of 1 MB, not 27.
 *
 * An input chunk lent from `input` whose body slice goes to a base64 part
 * (decoded at once by Base64Decoder, which then hands it back) is held by
 * nothing else: the little the splitter keeps of it is copied. The end of
 * such a chunk is not held here either.
 */
export function fastBodies(splitter: Transform, input?: BufferPool): void {
  const s = splitter as Splitter;
  const original = s._transform;
  const flush = s._flush;
  /** Whole body lines no delimiter can be among and the start of the next line, not yet given to the splitter. */
  let held: Buffer | undefined;
  s._transform = function (this: Splitter, chunk: Buffer, encoding: BufferEncoding, cb: TransformCallback) {
    if (held) {
      const before = held;
      held = undefined;
      // Nothing has reached the splitter since: it is still in the plain body.
      if (!takeAfterHeld(this, before, chunk, cb)) {
        original.call(this, before, encoding, (err?: Error | null) => (err ? cb(err) : original.call(this, chunk, encoding, cb)));
      }
      return;
    }
    // A chunk that starts in a header block: the splitter takes it up to the block's end (an
    // empty line), and the rest comes back here, in the body. Otherwise the splitter went
    // through the rest of the chunk a line at a time: a message's first 64 KiB.
    if (this.state === HEAD) {
      const end = afterHeaderBlock(this, chunk);
      if (end > 0 && end < chunk.length) {
        const rest = chunk.subarray(end);
        original.call(this, chunk.subarray(0, end), encoding, (err?: Error | null) => (err ? cb(err) : s._transform(rest, encoding, cb)));
        return;
      }
    }
    if (this.state === BODY && !this.node.multipart && !this.pendingLineTruncated && !this.hasFailed) {
      const received = chunk;
      let head: Buffer | undefined;
      let rest = chunk;
      if (this.lineLength) {
        const end = chunk.indexOf(LF) + 1;
        head = end ? Buffer.concat([...this.lineChunks, chunk.subarray(0, end)]) : undefined;
        rest = chunk.subarray(end);
      }
      const plain = (!this.lineLength || (head && !couldBeDelimiter(head))) && rest.length ? plainBodyLength(rest) : 0;
      if (plain > 0) {
        this.lineChunks = [];
        this.lineLength = 0;
        if (head) this.push({ node: this.node, type: 'body', value: head });
        const slice = rest.subarray(0, plain);
        chunk = rest.subarray(plain);
        const lent = input?.passedOn(received) ?? false;
        if (lent && this.node.encoding === 'base64') {
          chunk = ownCopy(chunk);
          input!.transfer(received, slice);
        }
        this.push({ node: this.node, type: 'body', value: slice });
        if (!lent) {
          held = chunk;
          return cb();
        }
      }
    }
    original.call(this, chunk, encoding, cb);
  };
  s._flush = function (this: Splitter, cb: TransformCallback) {
    const before = held;
    held = undefined;
    if (!before) return flush.call(this, cb);
    original.call(this, before, 'buffer' as BufferEncoding, (err?: Error | null) => (err ? cb(err) : flush.call(this, cb)));
  };

  /**
   * The held lines and the chunk after them, when its first line completes
   * the held unfinished one, that line cannot be a delimiter, and the rest
   * of the chunk has plain body lines: the held lines, that line and those
   * go out as body, and the end of the chunk is held. False, with nothing
   * done, otherwise.
   */
  function takeAfterHeld(t: Splitter, before: Buffer, chunk: Buffer, cb: TransformCallback): boolean {
    const end = chunk.indexOf(LF) + 1;
    // A piece of the unfinished line (smtp-server's data stream gives the last 4 bytes of every 64 KiB
    // on their own) is held with it, up to a bound: a line that long goes to the splitter.
    if (end === 0) {
      if (before.length + chunk.length > HELD_MAX) return false;
      held = Buffer.concat([before, chunk]);
      cb();
      return true;
    }
    const head = Buffer.concat([before, chunk.subarray(0, end)]);
    if (couldBeDelimiter(head)) return false;
    const rest = chunk.subarray(end);
    const plain = rest.length ? plainBodyLength(rest) : 0;
    if (plain === 0) return false;
    t.push({ node: t.node, type: 'body', value: head });
    t.push({ node: t.node, type: 'body', value: rest.subarray(0, plain) });
    held = rest.subarray(plain);
    cb();
    return true;
  }
}
