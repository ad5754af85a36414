// SMTP smuggling defence (Postfix's smtpd_forbid_bare_newline = reject): a
// line feed not preceded by a carriage return, in a command or in DATA, is
// refused. smtp-server accepts both "\r\n" and "\n" as a line end and keeps
// bare LFs inside DATA, so a peer (or a relay before it) could end DATA where
// we do not see an end and smuggle a second message in. The scan carries the
// previous byte over, so a CR at the end of one chunk and the LF at the start
// of the next still make one CRLF.
import { Transform, type TransformCallback } from 'node:stream';
import { permFail } from '../failure.js';

const CR = 0x0d;
const LF = 0x0a;

/** Index of the first bare LF in chunk, given the byte before it; -1 if none. */
export function bareLfAt(chunk: Uint8Array, before: number): number {
  for (let i = chunk.indexOf(LF); i !== -1; i = chunk.indexOf(LF, i + 1)) {
    const prev = i === 0 ? before : chunk[i - 1];
    if (prev !== CR) return i;
  }
  return -1;
}

export const BARE_LF_REASON = 'bare LF (a line end without CR) refused: SMTP smuggling defence; send CRLF line ends';

/** Scans a stream's chunks in order, the byte before each chunk carried over. The data starts after "DATA\r\n". */
export class BareLfScanner {
  private last = LF;
  /** True when this chunk holds a bare LF. */
  found(chunk: Uint8Array): boolean {
    if (chunk.length === 0) return false;
    if (bareLfAt(chunk, this.last) !== -1) return true;
    this.last = chunk[chunk.length - 1];
    return false;
  }
}

/** Passes the data through; errors with 550 5.5.2 at the first bare LF. The data starts after "DATA\r\n". */
export class BareLfGuard extends Transform {
  private readonly scanner = new BareLfScanner();
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    if (this.scanner.found(chunk)) return cb(permFail(BARE_LF_REASON, '5.5.2'));
    cb(null, chunk);
  }
}
