// Checking that a stream of bytes is UTF-8 without decoding it: the
// chunks are checked with buffer.isUtf8, a character cut between two chunks
// carried over to the next. A TextDecoder would build a string of every
// chunk only to throw it away.
import { isUtf8 } from 'node:buffer';

const NOTHING = Buffer.alloc(0);

/**
 * How many bytes at the end of b start a character that b does not finish:
 * 0 to 3. A byte that cannot start a character is left for isUtf8 to refuse.
 */
function unfinished(b: Buffer): number {
  for (let back = 1; back <= 3 && back <= b.length; back++) {
    const c = b[b.length - back];
    if ((c & 0xc0) === 0x80) continue; // a continuation byte: look further back
    const length = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 1;
    return length > back ? back : 0;
  }
  return 0;
}

/** Feed chunks in order; false as soon as they are not UTF-8. */
export class Utf8Checker {
  private carry = NOTHING;

  /** True while everything so far is UTF-8 (a character still unfinished at the end counts as fine until end()). */
  check(chunk: Buffer): boolean {
    const data = this.carry.length ? Buffer.concat([this.carry, chunk]) : chunk;
    const open = unfinished(data);
    this.carry = open ? Buffer.from(data.subarray(data.length - open)) : NOTHING;
    return isUtf8(open ? data.subarray(0, data.length - open) : data);
  }

  /** False when the bytes ended in the middle of a character. */
  end(): boolean {
    return this.carry.length === 0;
  }
}
