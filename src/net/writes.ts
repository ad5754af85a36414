// Writing to a socket without trusting the peer to read. A write that the
// socket cannot take at once waits for 'drain', but also ends on 'close' and
// 'error' (a peer that went away never drains) and on a timeout (a peer
// with a zero receive window never drains either). Used by both servers'
// sessions and both clients: nothing here knows a protocol.
import { type Duplex, Writable } from 'node:stream';

/** The peer stopped taking our bytes, or went away, while we were writing. */
export class WriteError extends Error {
  constructor(
    readonly kind: 'closed' | 'timeout',
    message: string,
  ) {
    super(message);
  }
}

/** The socket-like part we need: net.Socket and TLSSocket both fit. */
export interface Sink extends NodeJS.EventEmitter {
  readonly destroyed: boolean;
  readonly writableLength: number;
  readonly writableNeedDrain: boolean;
  write(chunk: string | Uint8Array): boolean;
}

/**
 * Resolve once the socket's buffer has drained; reject with a WriteError on
 * 'close' or 'error', or when `timeout` ms pass without a 'drain' (`why`
 * then says what ran out, when it is not the stall timeout).
 */
export function drained(socket: Sink, timeout: number, why?: string): Promise<void> {
  if (socket.destroyed) return Promise.reject(new WriteError('closed', 'connection closed'));
  if (!socket.writableNeedDrain) return Promise.resolve();
  return new Promise<void>((res, rej) => {
    const finish = (e?: WriteError) => {
      clearTimeout(timer);
      socket.off('drain', onDrain);
      socket.off('close', onClose);
      socket.off('error', onError);
      if (e) rej(e);
      else res();
    };
    const onDrain = () => finish();
    const onClose = () => finish(new WriteError('closed', 'connection closed'));
    const onError = (e: Error) => finish(new WriteError('closed', `connection failed: ${e.message}`));
    const timer = setTimeout(() => finish(new WriteError('timeout', why ?? `peer took no data for ${Math.round(timeout / 1000)} s`)), Math.max(timeout, 0));
    socket.on('drain', onDrain);
    socket.on('close', onClose);
    socket.on('error', onError);
  });
}

/** Write, and if the socket's buffer is full, wait as drained() does. */
export async function writeFully(socket: Sink, chunk: string | Uint8Array, timeout: number): Promise<void> {
  if (socket.destroyed) throw new WriteError('closed', 'connection closed');
  if (!socket.write(chunk)) await drained(socket, timeout);
}

/**
 * Wait while more than `limit` bytes of our answers are still buffered (the
 * peer sends commands but does not read the answers): the caller stops
 * reading meanwhile, so TCP pushes back on the peer instead of our memory
 * growing.
 */
export async function backpressure(socket: Sink, limit: number, timeout: number): Promise<void> {
  if (socket.writableLength > limit) await drained(socket, timeout);
}

export interface SinkLimits {
  /** ms the peer may take no data at all. */
  stall: number;
  /** Bytes per second the peer must take on average after `grace` ms; 0 = no minimum. */
  minRate?: number;
  grace?: number;
}

/**
 * A Writable onto the socket that respects backpressure, never ends the
 * socket, and fails as drained() does; with a minimum rate, a peer that
 * takes our bytes a trickle at a time is cut too.
 */
export function socketSink(socket: Sink, limits: SinkLimits): Writable {
  const { stall, minRate = 0, grace = 0 } = limits;
  const start = Date.now() + grace;
  let taken = 0;
  return new Writable({
    highWaterMark: 256 * 1024,
    write(chunk: Buffer, _e, cb) {
      const wait = async () => {
        if (socket.destroyed) throw new WriteError('closed', 'connection closed');
        taken += chunk.length;
        if (socket.write(chunk)) return;
        // The bytes written so far buy time: one second per minRate bytes after the grace.
        const byRate = minRate ? start + ((taken - socket.writableLength) / minRate) * 1000 - Date.now() : Infinity;
        if (byRate < stall) await drained(socket, byRate, `peer took data slower than ${minRate} bytes/s`);
        else await drained(socket, stall);
      };
      wait().then(() => cb(), cb);
    },
  });
}

/** End a socket so that what was written reaches the peer; destroy it if the peer does not take it and close in time. */
export function closeGently(socket: Duplex, grace = 5000, last?: string): void {
  if (socket.destroyed) return;
  if (last === undefined) socket.end();
  else socket.end(last);
  const t = setTimeout(() => socket.destroy(), grace);
  t.unref();
  socket.once('close', () => clearTimeout(t));
}
