// Where a legacy message's header section ends. The MIME parser takes every
// line up to the first empty one as a header, and drops one without a colon:
// text given with no header section at all ("printf 'hello\n' | mime-to-ima")
// or a header section run straight into the text lost that text silently.
// This ends the header section where Postfix's cleanup does: at the first
// line that is neither a header field nor the continuation of one. An empty
// line is put in before it, so the parser reads the rest as the body.
// Not a stream of its own: the reader that meters the input calls it (a
// Transform per message cost a tenth of mime-to-ima's small-message rate).

const LF = 0x0a;
const CR = 0x0d;
/** A field name (printable ASCII but ":", RFC 5322 3.6.8), then ":" (white space before it is obsolete syntax, still read). */
const FIELD = /^[\x21-\x39\x3b-\x7e]+[ \t]*:/;
const CONTINUATION = /^[ \t]/;
/** The mbox separator a message saved from a mailbox may start with: the parser skips it, as before. */
const MBOX_FROM = /^From /;

type Verdict = 'header' | 'end' | 'body';

/** What a header section line (line end removed) says about the section. */
function judge(line: string, first: boolean): Verdict {
  if (line === '') return 'end';
  if (first ? MBOX_FROM.test(line) : CONTINUATION.test(line)) return 'header';
  return FIELD.test(line) ? 'header' : 'body';
}

/**
 * Passes a legacy message on unchanged, except that an empty line goes in
 * before the first line of its header section that is not a header. Chunks
 * are held until the section ends (then passed on as they came), or
 * `limit` bytes of it have been read (then the parser's own header limit
 * speaks).
 */
export class HeaderSectionEnd {
  private held: Buffer[] = [];
  private heldBytes = 0;
  /** The start of the line being read, as an offset into the held bytes. */
  private lineStart = 0;
  private first = true;
  private done = false;

  constructor(
    private readonly limit: number,
    /** Where the bytes go on. */
    private readonly push: (chunk: Buffer) => void,
  ) {}

  /** The next chunk of the message. */
  take(chunk: Buffer): void {
    if (this.done) return this.push(chunk);
    const base = this.heldBytes;
    this.held.push(chunk);
    this.heldBytes += chunk.length;
    for (let lf = chunk.indexOf(LF); lf !== -1 && !this.done; lf = chunk.indexOf(LF, lf + 1)) this.lineEnds(base + lf);
    // No end in sight after `limit` bytes: the section is too long for the parser, which says so.
    if (!this.done && this.heldBytes > this.limit) this.passHeld();
  }

  /** The message has ended. */
  end(): void {
    if (!this.done && this.lineStart < this.heldBytes) this.lineEnds(this.heldBytes);
    if (!this.done) this.passHeld();
  }
  /** The line from lineStart ends at `end` (its LF, or the end of the input). */
  private lineEnds(end: number): void {
    const bytes = this.heldSlice(this.lineStart, end);
    const line = bytes.toString('latin1').replace(/\r$/, '');
    const verdict = judge(line, this.first);
    this.first = false;
    if (verdict === 'header') this.lineStart = end + 1;
    else if (verdict === 'end') this.passHeld();
    else this.startBody(bytes[bytes.length - 1] === CR ? '\r\n' : '\n');
  }

  /** The held bytes from `from` to `to`: a copy when they span chunks (only a line of the header section). */
  private heldSlice(from: number, to: number): Buffer {
    let at = 0;
    const parts: Buffer[] = [];
    for (const c of this.held) {
      const lo = Math.max(from - at, 0);
      const hi = Math.min(to - at, c.length);
      if (lo < hi) parts.push(c.subarray(lo, hi));
      at += c.length;
    }
    return parts.length === 1 ? parts[0] : Buffer.concat(parts);
  }

  /** The section ended by itself (or is too long to look at): everything held goes on as it came. */
  private passHeld(): void {
    for (const c of this.held) this.push(c);
    this.held = [];
    this.done = true;
  }

  /** The line at lineStart is the first of the body: the empty line that ends the header section goes before it. */
  private startBody(newline: string): void {
    const all = Buffer.concat(this.held);
    this.held = [];
    this.done = true;
    this.push(all.subarray(0, this.lineStart));
    this.push(Buffer.from(newline));
    this.push(all.subarray(this.lineStart));
  }
}
