// The one reader of a DATA stream: each chunk is checked for bare LFs and
// counted against the size limit, then written to every consumer (the MIME
// conversion, the SPF/DKIM/DMARC checks) as fast as the slowest takes it.
// One listener instead of a chain of Transforms and an async iterator per
// message (the profile of 4 KB messages: stream objects, not bytes, were the
// cost). At the first problem the consumers are stopped at once and the rest
// of the data is read and thrown away, whoever was still busy: smtp-server
// answers only after the end of the data, so the refusal (552, 550 5.5.2)
// goes out when the client has sent it all, never while it still writes.
import type { Readable, Writable } from 'node:stream';
import { permFail, tempFail } from '../failure.js';
import { BARE_LF_REASON, BareLfScanner } from './bare-lf.js';

const ignore = () => {};

/** Reads `source` into consumers: bare LF -> 550 5.5.2, more than `limit` bytes -> 552 5.3.4. */
export class DataTap {
  /** Bytes read so far (the whole message once done). */
  bytes = 0;
  private readonly scanner = new BareLfScanner();
  constructor(
    private readonly source: Readable,
    private readonly limit: number,
  ) {}

  /** Resolves when the data ended and every consumer was ended; rejects with the first problem. */
  into(outs: Writable[]): Promise<void> {
    const { source, limit } = this;
    return new Promise<void>((resolve, reject) => {
      const blocked = new Set<Writable>();
      let over = false;
      const finish = (e?: Error) => {
        if (over) return;
        over = true;
        source.off('data', onData);
        source.off('end', onEnd);
        source.off('close', onClose);
        for (const o of outs) o.off('drain', onFree).off('close', onFree);
        if (!e) {
          for (const o of outs) if (!o.destroyed) o.end();
          return resolve();
        }
        for (const o of outs) o.destroy(e);
        // The rest of the message is read and dropped: no reply may overtake the client's data.
        source.on('error', () => {});
        source.resume();
        reject(e);
      };
      function onFree(this: Writable) {
        blocked.delete(this);
        if (blocked.size === 0 && !over) source.resume();
      }
      const onData = (chunk: Buffer) => {
        this.bytes += chunk.length;
        if (this.bytes > limit) return finish(permFail(`message larger than the limit of ${limit} bytes`, '5.3.4'));
        if (this.scanner.found(chunk)) return finish(permFail(BARE_LF_REASON, '5.5.2'));
        for (const o of outs) if (!o.destroyed && !o.write(chunk)) blocked.add(o);
        if (blocked.size) source.pause();
      };
      const onEnd = () => finish();
      const onClose = () => finish(tempFail('the connection closed during DATA'));
      // A consumer learns of a refusal by reading (a destroyed stream gives its error to a reader), so
      // one that has not started yet (a check still loading) must not crash the process with it now.
      for (const o of outs) o.on('drain', onFree).on('close', onFree).on('error', ignore);
      source.on('data', onData);
      source.once('end', onEnd);
      source.once('close', onClose);
      source.once('error', (e) => finish(e));
    });
  }
}

// smtp-server's data-mode parser, the part that finds the end of DATA and
// removes escape dots. Its scan looks at every byte in JavaScript; under
// 1 MB messages from 10 sessions that loop and its copy were 14% of the
// server's CPU (cpu profile, handler off). This is the same function as
// smtp-server 3.21's SMTPStream._feedDataStream, step for step, with the
// byte loop replaced by a native search for the only bytes it acts on: a
// dot right after a line feed, and without the copy of each chunk behind the
// last bytes of the one before (the original's concat copied every byte of
// a message once more) unless a dot sits at the join. The differential test in
// test/smtp/receive-data.test.ts holds it to the original for every split.
const LF_DOT = Buffer.from('\n.');

/** The fields of smtp-server's SMTPStream the data mode uses (not in its public types). */
export interface DataParser {
  _dataStream: Writable & { destroyed: boolean };
  _lastBytes: Buffer | false;
  _atDataStart: boolean;
  _countDataBytes(len: number): void;
  _endDataMode(chunk: Buffer | false, remainder: Buffer, done: (e?: Error) => void): void;
  _feedDataStream(chunk: Buffer, done: (e?: Error) => void): void;
}

/**
 * Whether held + chunk has a line feed followed by a dot within the reach of
 * held: at positions 1 to held.length + 2 of the two joined, the ones the
 * scan below can look at across the join (a chunk too short to tell counts as yes).
 */
function dotAtJoin(held: Buffer, chunk: Buffer): boolean {
  if (chunk.length < 4) return true;
  const at = (k: number) => (k < held.length ? held[k] : chunk[k - held.length]);
  for (let k = 1; k <= held.length + 2; k++) if (at(k) === 0x0a && at(k + 1) === 0x2e) return true;
  return false;
}

function feedDataStream(this: DataParser, chunk: Buffer, done: (e?: Error) => void): void {
  const dataStream = this._dataStream;
  if (this._lastBytes && this._lastBytes.length) {
    const held = this._lastBytes;
    this._lastBytes = false;
    if (!this._atDataStart && !dotAtJoin(held, chunk)) {
      // Nothing to find where the two meet: the held bytes go out as they are and the chunk is
      // scanned alone, instead of copying every chunk of the message behind its predecessor's tail.
      this._countDataBytes(held.length);
      if (dataStream.writable) dataStream.write(held);
    } else chunk = Buffer.concat([held, chunk], held.length + chunk.length);
  }
  let len = chunk.length;
  // A first line of "." ends the data at once; "..": the escape dot goes, the dot after it is content.
  if (this._atDataStart && len >= 3 && chunk[0] === 0x2e && chunk[1] === 0x0d && chunk[2] === 0x0a) {
    this._endDataMode(false, chunk.subarray(3), done);
    return;
  }
  if (this._atDataStart && len >= 2 && chunk[0] === 0x2e && chunk[1] === 0x2e) {
    chunk = chunk.subarray(1);
    len--;
    this._atDataStart = false;
  }
  // Each dot at a line start, at i with 2 <= i < len - 2 (as the original's loop).
  for (let lf = chunk.indexOf(LF_DOT, 1); lf !== -1 && lf + 1 < len - 2; lf = chunk.indexOf(LF_DOT, lf + 1)) {
    const i = lf + 1;
    if (chunk[i - 2] === 0x0d && chunk[i + 1] === 0x0d && chunk[i + 2] === 0x0a) {
      // "\r\n.\r\n": the end of the data; the CRLF before the dot is the content's last line end.
      const buf = chunk.subarray(0, i);
      this._countDataBytes(buf.length);
      this._endDataMode(buf, chunk.subarray(i + 3), done);
      return;
    }
    if (chunk[i + 1] === 0x2e) {
      // An escape dot: what comes before goes out, the rest goes on without the dot.
      const buf = chunk.subarray(0, i);
      this._lastBytes = false;
      this._countDataBytes(buf.length);
      if (dataStream.writable) dataStream.write(buf);
      const rest = chunk.subarray(i + 1);
      setImmediate(() => this._feedDataStream(rest, done));
      return;
    }
  }
  // The last 4 bytes wait for the next chunk (an end sequence may straddle the two).
  this._lastBytes = chunk.length < 4 ? chunk : chunk.subarray(chunk.length - 4);
  if (this._lastBytes.length >= chunk.length) return done();
  const buf = chunk.subarray(0, chunk.length - this._lastBytes.length);
  this._countDataBytes(buf.length);
  if (!dataStream.writable) return done();
  if (dataStream.write(buf) || dataStream.destroyed) return done();
  // A stream the application destroys never drains, it only closes.
  const onDrain = () => {
    dataStream.removeListener('drain', onDrain);
    dataStream.removeListener('close', onDrain);
    done();
  };
  dataStream.once('drain', onDrain);
  dataStream.once('close', onDrain);
}

/** Give one smtp-server parser the faster data-mode scan. */
export function fastDataScan(parser: DataParser): void {
  parser._feedDataStream = feedDataStream;
}
