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

const ignore = () => {};
const prematureClose = () => Object.assign(new Error('Premature close'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });

/**
 * The chunks of a byte stream one at a time, as they were written into it.
 * Iterating a Readable itself (for await) calls read(), which joins every
 * chunk waiting in its buffer into one new Buffer: a copy of the data each
 * time the reader falls behind. In server-receive that was two copies of
 * every 1 MiB message (one in handle-incoming-mail, one in the mailbox
 * writer), most of the garbage that held its RSS up. Like for await, it
 * throws at the stream's error or premature close and destroys the stream
 * when the reader leaves before the end.
 */
export async function* chunksOf(stream: Readable): AsyncGenerator<Buffer> {
  const queue: Buffer[] = [];
  let ended = false;
  let failure: Error | undefined;
  let wake: (() => void) | undefined;
  const poke = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  // A waiting reader takes the chunk at once; otherwise the stream holds the rest until it is asked.
  const onData = (chunk: Buffer | string) => {
    queue.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
    if (wake) poke();
    else stream.pause();
  };
  const onEnd = () => {
    ended = true;
    poke();
  };
  const onError = (e: Error) => {
    failure ??= e;
    poke();
  };
  const onClose = () => {
    if (!ended) failure ??= prematureClose();
    poke();
  };
  if (stream.readableEnded) return;
  if (stream.destroyed) {
    stream.on('error', ignore); // its error may still be on its way: this throw reports it
    throw stream.errored ?? prematureClose();
  }
  stream.on('data', onData).on('end', onEnd).on('error', onError).on('close', onClose);
  try {
    for (;;) {
      if (failure) throw failure;
      const chunk = queue.shift();
      if (chunk) {
        yield chunk;
        continue;
      }
      if (ended) return;
      const more = new Promise<void>((res) => (wake = res));
      stream.resume();
      await more;
    }
  } finally {
    stream.off('data', onData).off('end', onEnd).off('error', onError).off('close', onClose);
    if (!ended) stream.on('error', ignore).destroy();
  }
}

/** Until a writable stream takes more (after write() said false), fails or closes: a writer waits on this, never on 'drain' alone. */
export function drained(stream: Writable): Promise<void> {
  if (stream.destroyed) return Promise.resolve();
  return new Promise((res) => {
    const go = () => {
      stream.off('drain', go).off('error', go).off('close', go);
      res();
    };
    stream.on('drain', go).on('error', go).on('close', go);
  });
}
