// The adapter between smtp-server and the toolkit's conventions. smtp-server
// owns its sockets, so what src/net/listen.ts does for the TLS servers is
// done here for it: the three listening modes (--listen, --inetd, systemd's
// LISTEN_FDS), SIGTERM (no new connections, sessions finish), SIGHUP
// (reload), connection limits per address. Two things smtp-server cannot do
// are patched into each connection: the bare-LF refusal on the command
// stream (bare-lf.ts) and replies whose text already starts with an
// RFC 3463 code keep that code instead of smtp-server's guess. The
// greeting goes out at once, without smtp-server's 100 ms pause, and the
// end of DATA is searched for natively (receive-data.ts).
import type { EventEmitter } from 'node:events';
import net from 'node:net';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import { usageError } from '../failure.js';
import type { Log } from '../log.js';
import { type Where, listenUnlessStopped } from '../net/listen.js';
import { BARE_LF_REASON, bareLfAt } from './bare-lf.js';
import { type DataParser, fastDataScan } from './receive-data.js';

/** An SMTP reply as an error smtp-server understands: its code, and the text led by the enhanced code. */
export class SmtpReply extends Error {
  readonly responseCode: number;
  constructor(
    code: number,
    readonly enhanced: string,
    text: string,
  ) {
    super(`${enhanced} ${text}`);
    this.responseCode = code;
  }
}
export const reply = (code: number, enhanced: string, text: string) => new SmtpReply(code, enhanced, text);

const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3}(?: |$)/;

// The parts of smtp-server's connection and parser this adapter touches (not in its public types).
interface Parser {
  _dataMode: boolean;
  _remainder: string;
  isClosed: boolean;
  _write(chunk: Buffer, enc: BufferEncoding, next: (e?: Error) => void): void;
}
interface Connection {
  _server: { options: SMTPServerOptions; connections: Set<unknown> };
  _parser: Parser | false;
  _setListeners(ready: () => void): void;
  init(): void;
  connectionReady(): void;
  _createParser(): Parser;
  send(code: number, data?: string | string[], context?: unknown): void;
  close(): void;
}

/** Refuse a command line ended by a bare LF: 550 5.5.2, and the connection is closed (as Postfix does). The data mode scans faster (receive-data.ts). */
function guardParser(conn: Connection, parser: Parser, log: Log): Parser {
  fastDataScan(parser as unknown as DataParser);
  const write = parser._write.bind(parser);
  parser._write = (chunk, enc, next) => {
    if (!parser._dataMode && !parser.isClosed) {
      // The byte before this chunk: the end of the unfinished line, else the LF that ended the last one.
      const before = parser._remainder ? parser._remainder.charCodeAt(parser._remainder.length - 1) : 0x0a;
      if (bareLfAt(chunk, before) !== -1) {
        parser.isClosed = true;
        log.info('bare LF in a command: refused, connection closed');
        conn.send(550, `5.5.2 ${BARE_LF_REASON}`);
        conn.close();
        return next();
      }
    }
    write(chunk, enc, next);
  };
  return parser;
}

/**
 * Greet as soon as the connection is set up. smtp-server waits 100 ms first
 * (to catch clients that talk before the greeting); with one connection per
 * message that pause was most of each message's time (profile: the process
 * idle ~60% at 10 sessions) and capped a session at under 10 messages/s.
 * Postfix's smtpd does not pause either. The connection limit check is kept.
 */
function greetAtOnce(conn: Connection): void {
  conn.init = () =>
    conn._setListeners(() => {
      const max = conn._server.options.maxClients;
      // With an enhanced status code, as every reply (smtp-server's own text has none).
      if (max && conn._server.connections.size > max) return conn.send(421, `4.7.0 ${conn._server.options.name} too many connections; try again later`, false);
      conn.connectionReady();
    });
}

function patchConnection(conn: Connection, log: Log): void {
  greetAtOnce(conn);
  const send = conn.send.bind(conn);
  conn.send = (code, data, context) => send(code, data, typeof data === 'string' && ENHANCED.test(data) ? false : context);
  if (conn._parser) guardParser(conn, conn._parser, log);
  const create = conn._createParser.bind(conn);
  conn._createParser = () => guardParser(conn, create(), log); // STARTTLS starts a new parser
}

/** smtp-server with the toolkit's patches on every connection. */
export class ReceiveServer extends SMTPServer {
  constructor(
    options: SMTPServerOptions,
    private readonly log: Log,
  ) {
    super(options);
  }
  override connect(socket: net.Socket, socketOptions: unknown): void {
    // Without it each reply after "." waits for the client's delayed ACK (~40 ms): Nagle holds the small write.
    socket.setNoDelay(true);
    // connect() makes the connection, adds it here, then calls its init(): patched on the way in, before init runs.
    const connections = this.connections as Set<unknown>;
    connections.add = (conn: unknown) => {
      delete (connections as Partial<Set<unknown>>).add;
      patchConnection(conn as Connection, this.log);
      return Set.prototype.add.call(connections, conn);
    };
    try {
      (SMTPServer.prototype as unknown as { connect(s: net.Socket, o: unknown): void }).connect.call(this, socket, socketOptions);
    } finally {
      delete (connections as Partial<Set<unknown>>).add;
    }
  }
}

/** Counts connections per client address; the session refuses the one over the limit. */
export class PerAddress {
  private readonly counts = new Map<string, number>();
  enter(address: string, max: number): boolean {
    const n = this.counts.get(address) ?? 0;
    this.counts.set(address, n + 1);
    return n < max;
  }
  leave(address: string): void {
    const n = (this.counts.get(address) ?? 1) - 1;
    if (n > 0) this.counts.set(address, n);
    else this.counts.delete(address);
  }
}

export interface ServeSmtpOptions {
  log: Log;
  signals?: EventEmitter;
  signal?: AbortSignal;
  /** SIGHUP: read the config again and apply it; a throw keeps the old one. */
  reload?(): Promise<void>;
  /** Resolves when every message in flight is answered (SIGTERM, the end of an inetd connection). */
  drained(): Promise<void>;
  onListening?(address: net.AddressInfo): void;
}

/** The connection on stdin (inetd, systemd Accept=yes) as a socket smtp-server can use. */
function inetdSocket(where: Extract<Where, { mode: 'inetd' }>): net.Socket {
  const fd = (where.stdin as net.Socket & { _handle?: { fd?: number } })._handle?.fd;
  if (!(where.stdin instanceof net.Socket) || fd === undefined || fd < 0) throw usageError('--inetd needs the connection (a socket) on stdin');
  return new net.Socket({ fd, readable: true, writable: true });
}

/** Run the server in the given mode until SIGTERM (or the inetd connection ends) and every message in flight is answered. */
export async function serveSmtp(where: Where, server: ReceiveServer, opts: ServeSmtpOptions): Promise<void> {
  const { log } = opts;
  server.on('error', (e: Error) => log.debug(`smtp: ${e.message}`));
  if (where.mode === 'inetd') {
    const socket = inetdSocket(where);
    const closed = new Promise<void>((res) => socket.once('close', () => res()));
    server.server.emit('connection', socket);
    await closed;
    await opts.drained();
    return;
  }
  let stopped!: () => void;
  const done = new Promise<void>((res) => (stopped = res));
  const stopping = new AbortController();
  const stop = () => {
    stopping.abort();
    log.info('stopping: no new connections; letting sessions finish');
    server.close(() => stopped());
  };
  const onHup = () => {
    opts.reload?.().then(
      () => log.info('reloaded configuration, users and certificates'),
      (e: Error) => log.error(`reload failed, keeping the old configuration: ${e.message}`),
    );
  };
  opts.signals?.on('SIGTERM', stop);
  opts.signals?.on('SIGINT', stop);
  opts.signals?.on('SIGHUP', onHup);
  opts.signal?.addEventListener('abort', stop, { once: true });
  try {
    if (!(await listenUnlessStopped(server.server, where, stopping.signal, log))) return;
    const a = server.server.address();
    if (a && typeof a === 'object') {
      log.info(`listening on ${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`);
      opts.onListening?.(a);
    } else log.info('listening on the inherited socket');
    await done;
    await opts.drained();
  } finally {
    opts.signals?.off('SIGTERM', stop);
    opts.signals?.off('SIGINT', stop);
    opts.signals?.off('SIGHUP', onHup);
  }
}
