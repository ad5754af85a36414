// Joining streams into a line, as stream.pipeline does, without the
// AbortController pipeline makes and aborts on every call: that abort builds
// a DOMException with a stack trace, a cost paid several times for every
// message a server receives (readMessage) or converts (mime-to-ima).
import { type Duplex, type Readable, type Writable, finished } from 'node:stream';

/**
 * Pipe each stream into the next. done(err) at the first error or premature
 * close of any of them, after every stream is destroyed with that error (so
 * a reader waiting on one of them fails too, rather than wait forever);
 * done() once the last has finished. Returns a function that stops watching,
 * for a reader that leaves early and destroys the streams itself: no
 * premature-close errors are then built for nobody.
 */
export function joinStreams(streams: [Readable, ...Duplex[], Writable], done: (err?: Error) => void): () => void {
  let waiting = streams.length;
  let settled = false;
  const each = (err?: Error | null) => {
    if (settled) return;
    if (err) {
      settled = true;
      for (const s of streams) s.destroy(err);
      return done(err);
    }
    if (--waiting === 0) {
      settled = true;
      done();
    }
  };
  const last = streams.length - 1;
  const watches = streams.map((s, i) =>
    // The first is only read from and the last only written to: their other side does not count.
    finished(s, { readable: i < last, writable: i > 0 }, each),
  );
  for (let i = 0; i < last; i++) (streams[i] as Readable).pipe(streams[i + 1] as Writable);
  return () => {
    settled = true;
    for (const unwatch of watches) unwatch();
  };
}
