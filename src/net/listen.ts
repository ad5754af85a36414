// Generic TLS server plumbing for the toolkit's servers (server-receive,
// post-office). No protocol inside: it runs a TLS server in one of three
// modes (--listen ADDR:PORT, --inetd, systemd socket activation), enforces
// connection limits and the handshake timeout, checks that a client
// certificate was verified when one is required, and hands each
// authenticated TLS socket to the protocol's session function.
// SIGTERM: stop accepting, let sessions finish. SIGHUP: reload.
import { X509Certificate, randomBytes } from 'node:crypto';
import type { EventEmitter } from 'node:events';
import net from 'node:net';
import { Duplex, type Readable, type Writable } from 'node:stream';
import tls, { type SecureContextOptions, type TLSSocket } from 'node:tls';
import { usageError } from '../failure.js';
import type { Log } from '../log.js';
import { clientVerdict } from './tls.js';
import { closeGently } from './writes.js';

export type Where =
  { mode: 'listen'; host: string; port: number } | { mode: 'inetd'; stdin: Readable; stdout: Writable; remote?: string } | { mode: 'systemd'; fds: number[] };

export interface ConnectionLimits {
  maxConnections: number;
  maxPerAddress: number;
  /** ms for the TLS handshake. */
  handshakeTimeout: number;
  /** ms sessions get to finish after SIGTERM before they are cut. */
  shutdownTimeout: number;
}

export interface Settings {
  tls: SecureContextOptions;
  limits: ConnectionLimits;
  /** 'required': an unverified peer is refused before the session starts. 'optional': the session decides (password logins). */
  clientCert: 'required' | 'optional';
}

export interface Peer {
  /** The peer's IP address ('inetd' when unknown). */
  address: string;
  /** Certificate the peer sent, if any. */
  cert?: X509Certificate;
  /** Did the certificate chain to a trusted CA, within its dates, with the clientAuth purpose? */
  authorized: boolean;
  /** Why not, in words for the peer, when not authorized. */
  authError?: string;
}

export interface Hooks {
  /** Run one session on an accepted socket; resolve when it is over. `stopping` fires on SIGTERM. */
  session(socket: TLSSocket, peer: Peer, stopping: AbortSignal): Promise<void>;
  /** Write the protocol's refusal line (the peer's certificate, a limit) before the socket is closed. */
  refuse(socket: TLSSocket, reason: string): void;
  /** SIGHUP: read config and certificates again. A throw keeps the old settings. */
  reload?(): Promise<Settings>;
}

export interface ServeOptions {
  log: Log;
  /** Where SIGTERM/SIGINT/SIGHUP come from (the process); absent in-process. */
  signals?: EventEmitter;
  /** Aborting it is the same as SIGTERM. */
  signal?: AbortSignal;
  /** Told of each connection event (metrics.ts): open, close, accepted, refused, limited, handshake_failed. */
  observe?(event: 'open' | 'close' | 'accepted' | 'refused' | 'limited' | 'handshake_failed'): void;
  /** Told the bound address once listening (tests, the demo). */
  onListening?(address: net.AddressInfo): void;
}

/** Work out the mode from the flags and the environment (LISTEN_FDS, LISTEN_PID). */
export function whereFrom(
  listen: string | undefined,
  inetd: boolean | undefined,
  env: Record<string, string | undefined>,
  stdio: { stdin: Readable; stdout: Writable },
  pid: number,
): Where | undefined {
  if (listen !== undefined && inetd) throw usageError('--listen and --inetd exclude each other');
  if (inetd) return { mode: 'inetd', ...stdio, remote: (stdio.stdin as net.Socket).remoteAddress ?? env.REMOTE_ADDR };
  if (listen !== undefined) return { mode: 'listen', ...parseHostPort(listen) };
  const n = Number(env.LISTEN_FDS);
  if (env.LISTEN_FDS && Number.isInteger(n) && n > 0 && (!env.LISTEN_PID || Number(env.LISTEN_PID) === pid)) {
    return { mode: 'systemd', fds: Array.from({ length: n }, (_, i) => 3 + i) };
  }
  return undefined;
}

const HOST_PORT = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:[\]]*)):(\d{1,5})$/;

/**
 * Why s cannot be a config's listen address, undefined if it can: the form
 * parseHostPort takes, and a port a server can be found at (1 to 65535; 0,
 * any free port, is for --listen in tests). Checked with the config, so
 * --check-config refuses what a start would.
 */
export function listenProblem(s: string): string | undefined {
  const port = Number(HOST_PORT.exec(s)?.[3] ?? NaN);
  return port >= 1 && port <= 65535 ? undefined : 'must be ADDRESS:PORT with a port from 1 to 65535, such as [::]:4690';
}

/** "127.0.0.1:4690", "[::1]:4690", ":4690" (all addresses). */
export function parseHostPort(s: string): { host: string; port: number } {
  const m = HOST_PORT.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw usageError(`--listen ${JSON.stringify(s)}: expected ADDRESS:PORT, such as 127.0.0.1:4690 or [::1]:4690`);
  return { host: m[1] ?? (m[2] || '::'), port };
}

/**
 * Connection slots, counted from the TCP accept on (before any TLS), in
 * total and per address. The last quarter of the slots is kept for
 * addresses that hold none yet, so a few greedy addresses cannot fill the
 * server however many slots each may take.
 */
export class Slots {
  private total = 0;
  private readonly perAddress = new Map<string, number>();

  /** Take a slot for `address`; the reason when it is refused. */
  take(address: string, limits: ConnectionLimits): string | undefined {
    const mine = this.perAddress.get(address) ?? 0;
    if (this.total >= limits.maxConnections) return 'too many connections';
    if (mine >= limits.maxPerAddress) return 'too many connections from this address';
    if (mine > 0 && this.total >= limits.maxConnections - Math.floor(limits.maxConnections / 4))
      return 'too many connections: the last slots are kept for other addresses';
    this.total++;
    this.perAddress.set(address, mine + 1);
    return undefined;
  }

  release(address: string): void {
    this.total--;
    const left = (this.perAddress.get(address) ?? 1) - 1;
    if (left) this.perAddress.set(address, left);
    else this.perAddress.delete(address);
  }
}

/** The peer as TLS saw it: its certificate and the verdict on it (OpenSSL's, and ima(7)'s clientAuth rule: tls.ts clientVerdict). */
function peerOf(socket: TLSSocket, address: string): Peer {
  return { address, ...clientVerdict(socket) };
}

/** Which TCP connection a socket rides on (a TLS socket has the same remote address and port as its raw socket). */
const connectionKey = (s: net.Socket) => `${s.remoteAddress}:${s.remotePort}`;

/**
 * The TLS server: slots taken at the TCP accept, each verified connection
 * handed to `handle`. A slot is given back when its connection closes, or
 * earlier through `free` when its session is over (a socket may linger a
 * little while its last bytes drain).
 */
function tlsServer(
  current: () => Settings,
  log: Log,
  handle: (socket: TLSSocket) => void,
  free: Map<string, () => void>,
  observe?: ServeOptions['observe'],
): tls.Server {
  const { tls: context, limits } = current();
  const server = tls.createServer({
    ...context,
    requestCert: true,
    // OpenSSL verifies (chain, dates, purpose); the verdict is enforced in
    // the session runner so the peer gets a line saying why instead of a bare alert.
    rejectUnauthorized: false,
    handshakeTimeout: limits.handshakeTimeout,
  });
  const slots = new Slots();
  server.on('connection', (raw: net.Socket) => {
    // Without this an answer written after the peer's data waits for the
    // peer's delayed ACK (Nagle): about 40 ms per message on a reused connection.
    raw.setNoDelay?.(true);
    const address = raw.remoteAddress ?? 'unknown';
    const refused = slots.take(address, current().limits);
    if (refused) {
      log.warn(`${address}: connection dropped: ${refused}`);
      observe?.('limited');
      raw.destroy();
      return;
    }
    const key = connectionKey(raw);
    let held = true;
    const release = () => {
      if (!held) return;
      held = false;
      slots.release(address);
      if (free.get(key) === release) free.delete(key);
    };
    free.set(key, release);
    raw.once('close', release);
  });
  server.on('secureConnection', handle);
  server.on('tlsClientError', (e: Error & { code?: string }, socket: TLSSocket) => {
    log.info(`${socket.remoteAddress ?? 'unknown'}: TLS handshake failed: ${e.code ?? e.message}`);
    observe?.('handshake_failed');
    socket.destroy(); // Node does not close the socket on ERR_TLS_HANDSHAKE_TIMEOUT by itself
  });
  return server;
}

/** Serve the one connection on stdin/stdout (inetd, systemd Accept=yes); resolve when it is over. */
async function serveInetd(server: tls.Server, where: Extract<Where, { mode: 'inetd' }>, sessions: Set<Promise<void>>): Promise<void> {
  // A socket there gets a fresh read-write handle (Node opens stdin
  // read-only); anything else (pipes) goes through a generic duplex. Either
  // is handed to the same TLS server as an accepted connection.
  const fd = (where.stdin as net.Socket & { _handle?: { fd?: number } })._handle?.fd;
  const conn =
    where.stdin instanceof net.Socket && fd !== undefined && fd >= 0
      ? new net.Socket({ fd, readable: true, writable: true })
      : Duplex.from({ readable: where.stdin, writable: where.stdout });
  const closed = new Promise<void>((res) => conn.once('close', () => res()));
  server.emit('connection', conn);
  await closed;
  await Promise.all([...sessions]);
}

/**
 * Listen on an address or an inherited socket; false when told to stop
 * before the socket was bound (a worker waits on its primary for it), and
 * a socket that comes after that is closed at once.
 */
export function listenUnlessStopped(server: net.Server, where: Exclude<Where, { mode: 'inetd' }>, stopping: AbortSignal, log: Log): Promise<boolean> {
  if (stopping.aborted) return Promise.resolve(false);
  const bound = new Promise<boolean>((res, rej) => {
    const stop = () => {
      server.off('listening', listening).off('error', failed);
      server.once('listening', () => server.close()).on('error', () => {});
      res(false);
    };
    const listening = () => {
      stopping.removeEventListener('abort', stop);
      server.off('error', failed);
      res(true);
    };
    const failed = (e: Error) => {
      stopping.removeEventListener('abort', stop);
      server.off('listening', listening);
      rej(e);
    };
    stopping.addEventListener('abort', stop, { once: true });
    server.once('listening', listening).once('error', failed);
  });
  if (where.mode === 'listen') server.listen({ host: where.host, port: where.port });
  else {
    if (where.fds.length > 1) log.warn(`LISTEN_FDS=${where.fds.length}: serving the first socket only`);
    server.listen({ fd: where.fds[0] });
  }
  return bound;
}

/** Listen (an address or an inherited socket) and resolve once the server has closed and every session is over. */
async function serveListening(
  server: tls.Server,
  where: Exclude<Where, { mode: 'inetd' }>,
  sessions: Set<Promise<void>>,
  stopping: AbortSignal,
  opts: ServeOptions,
): Promise<void> {
  const { log } = opts;
  const closed = new Promise<void>((res) => server.once('close', res));
  if (!(await listenUnlessStopped(server, where, stopping, log))) return;
  const a = server.address();
  if (a && typeof a === 'object') {
    log.info(`listening on ${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`);
    opts.onListening?.(a);
  } else log.info(`listening on inherited socket(s) ${where.mode === 'systemd' ? where.fds.join(', ') : ''}`);
  await closed;
  await Promise.all([...sessions]);
}

/** Run the server until it is told to stop and every session is over. */
export async function serve(where: Where, initial: Settings, hooks: Hooks, opts: ServeOptions): Promise<void> {
  let settings = initial;
  const { log } = opts;
  const stopping = new AbortController();
  const sessions = new Set<Promise<void>>();
  const open = new Set<TLSSocket>();

  const handle = (socket: TLSSocket) => {
    const address = socket.remoteAddress ?? 'unknown';
    open.add(socket);
    socket.once('close', () => open.delete(socket));
    socket.on('error', (e) => log.debug(`${address}: ${e.message}`));
    opts.observe?.('open');
    const done = (async () => {
      const peer = peerOf(socket, address);
      if (!peer.authorized && settings.clientCert === 'required') {
        log.info(`${address}: refused: ${peer.authError}`);
        opts.observe?.('refused');
        hooks.refuse(socket, peer.authError!);
        return;
      }
      opts.observe?.('accepted');
      await hooks.session(socket, peer, stopping.signal);
    })()
      .catch((e) => log.error(`${address}: session failed: ${(e as Error).message}`))
      .finally(() => {
        free.get(connectionKey(socket))?.();
        closeGently(socket);
        sessions.delete(done);
        opts.observe?.('close');
      });
    sessions.add(done);
  };
  const free = new Map<string, () => void>();
  const server = tlsServer(() => settings, log, handle, free, opts.observe);
  if (where.mode === 'inetd') return serveInetd(server, where, sessions);

  const stop = () => {
    if (stopping.signal.aborted) return;
    log.info('stopping: no new connections; letting sessions finish');
    stopping.abort();
    server.close();
    const cut = setTimeout(() => {
      log.warn(`stopping: ${sessions.size} session(s) still open after ${settings.limits.shutdownTimeout / 1000} s, cutting them`);
      for (const s of open) s.destroy();
    }, settings.limits.shutdownTimeout);
    cut.unref();
  };
  const reload = async () => {
    if (!hooks.reload) return;
    try {
      const next = await hooks.reload();
      server.setSecureContext(next.tls);
      // New ticket keys: a client must not resume a session made under the
      // old certificate (a replaced, perhaps compromised, one).
      server.setTicketKeys(randomBytes(48));
      settings = next;
      log.info('reloaded configuration and certificates');
    } catch (e) {
      log.error(`reload failed, keeping the old configuration: ${(e as Error).message}`);
    }
  };
  const onHup = () => void reload();
  opts.signals?.on('SIGTERM', stop);
  opts.signals?.on('SIGINT', stop);
  opts.signals?.on('SIGHUP', onHup);
  opts.signal?.addEventListener('abort', stop, { once: true });
  try {
    await serveListening(server, where, sessions, stopping.signal, opts);
  } finally {
    opts.signals?.off('SIGTERM', stop);
    opts.signals?.off('SIGINT', stop);
    opts.signals?.off('SIGHUP', onHup);
  }
}
