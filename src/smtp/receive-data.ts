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
