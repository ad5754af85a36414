// IMDP, the server-to-server delivery protocol (ima(7)): the wire words, the
// strict parsers and formatters of its lines, and the client that send-mail
// and the benchmark use. The server side is src/imdp-session.ts.
import type { Readable } from 'node:stream';
import type { SecureContextOptions, TLSSocket } from 'node:tls';
import { tempFail } from './failure.js';
import { LineError, LineReader } from './lines.js';
import { oneLine } from './log.js';
import { connectTls } from './tls.js';

/** The port IMDP servers listen on when nothing else is said (config table, SRV record). */
export const IMDP_PORT = 4690;
export const VERSION = '1';
/** Longest control line either side sends, LF excluded. */
export const MAX_LINE = 1000;

/** Final statuses and the exit codes of the handler they come from (DESIGN.md 2). */
export const FINAL = ['OK', 'FAIL', 'PARTIAL', 'TEMPFAIL'] as const;
export type Final = (typeof FINAL)[number];

/** Text that is safe inside one protocol line: no control characters, bounded. */
export function lineText(s: string, max = MAX_LINE - 40): string {
  const t = oneLine(s).replace(/\\n/g, ' ');
  if (Buffer.byteLength(t) <= max) return t;
  return Buffer.from(t).subarray(0, max).toString('utf8').replace(/\uFFFD+$/, '') + '...';
}

// ---- lines a client sends ------------------------------------------------

export type Command =
  | { verb: 'MAIL'; size: number }
  | { verb: 'DATA' }
  | { verb: 'ABORT' }
  | { verb: 'DONE' }
  | { verb: 'bad'; reason: string; mail?: boolean };

const SIZE = /^(0|[1-9]\d{0,15})$/;

/** Parse one client control line strictly: exact verbs, single spaces, decimal sizes. */
export function parseCommand(line: string): Command {
  const sp = line.indexOf(' ');
  const verb = sp === -1 ? line : line.slice(0, sp);
  const arg = sp === -1 ? undefined : line.slice(sp + 1);
  switch (verb) {
    case 'MAIL':
      if (arg === undefined || !SIZE.test(arg) || !Number.isSafeInteger(Number(arg))) {
        return { verb: 'bad', reason: 'MAIL needs the message size in bytes: MAIL <size>', mail: true };
      }
      return { verb: 'MAIL', size: Number(arg) };
    case 'DATA':
    case 'ABORT':
    case 'DONE':
      return arg === undefined ? { verb } : { verb: 'bad', reason: `${verb} takes no argument` };
    default:
      return { verb: 'bad', reason: `unknown command ${JSON.stringify(lineText(verb, 40))}: expected MAIL, DATA, ABORT or DONE` };
  }
}

// ---- lines a server sends -------------------------------------------------

export const greeting = (domain: string) => `IMDP ${VERSION} ${domain}\n`;
export const reply = (text: string) => `REPLY ${lineText(text)}\n`;
export const accept = () => 'ACCEPT\n';
/** REJECT with an RFC 3463 status: 4.x.x is temporary, 5.x.x permanent. */
export const reject = (status: string, text: string) => `REJECT ${status} ${lineText(text)}\n`;
export const final = (word: Final, text?: string) => (text ? `${word} ${lineText(text)}\n` : `${word}\n`);
export const error = (text: string) => `ERROR ${lineText(text)}\n`;
export const bye = (text: string) => `BYE ${lineText(text)}\n`;

export interface Answer {
  /** ACCEPT, REJECT, OK, FAIL, PARTIAL, TEMPFAIL, ERROR or BYE. */
  word: string;
  /** For REJECT, the status (4.x.x or 5.x.x). */
  status?: string;
  text: string;
  /** REPLY lines that came before it, in order. */
  replies: string[];
}

/** Is this answer a temporary refusal (retry later) rather than a permanent one? */
export function isTemporary(a: Answer): boolean {
  if (a.word === 'REJECT') return a.status?.startsWith('4') ?? true;
  return a.word !== 'FAIL' && a.word !== 'OK' && a.word !== 'PARTIAL';
}

// ---- the client ------------------------------------------------------------

export interface ClientOptions {
  host: string;
  port: number;
  /** The recipient domain: the server's certificate must cover it. */
  domain: string;
  /** Our certificate and key (a server certificate of the sending domain) and the CAs we trust. */
  tls: SecureContextOptions;
  /** ms for connect + handshake + greeting, and for each answer. */
  timeout: number;
  /** ms an answer to DATA may take (the handler stores the message). */
  resultTimeout?: number;
}

/** A connection to an IMDP server, greeted and verified. Calls may be pipelined: answers come in order. */
export class ImdpClient {
  private constructor(
    readonly socket: TLSSocket,
    private readonly reader: LineReader,
    readonly serverDomain: string,
    private readonly opts: ClientOptions,
  ) {}

  static async connect(opts: ClientOptions): Promise<ImdpClient> {
    const where = `${opts.domain} (${opts.host}:${opts.port})`;
    const socket = await connectTls({ host: opts.host, port: opts.port, name: opts.domain, tls: opts.tls, timeout: opts.timeout, where });
    const reader = new LineReader(socket, { maxLine: MAX_LINE, idleTimeout: opts.timeout, dataTimeout: opts.timeout });
    let first: string | null;
    try {
      first = await reader.readLine();
    } catch (e) {
      socket.destroy();
      throw tempFail(`${where}: no greeting: ${(e as Error).message}`, '4.4.2');
    }
    if (first?.startsWith('BYE ')) {
      socket.destroy();
      throw tempFail(`${where}: refused: ${first.slice(4)}`, '4.7.0');
    }
    const m = first ? /^IMDP (\d+) (\S+)$/.exec(first) : null;
    if (!m || m[1] !== VERSION) {
      socket.destroy();
      throw tempFail(`${where}: not an IMDP ${VERSION} greeting: ${JSON.stringify(lineText(first ?? '(connection closed)', 80))}`, '4.4.2');
    }
    return new ImdpClient(socket, reader, m[2], opts);
  }

  private write(s: string | Buffer): boolean {
    return this.socket.write(s);
  }

  /** Announce a message: MAIL, its headers entry, the empty line. Read the answer with readAnswer(). */
  sendMail(headersRaw: Buffer, size: number): void {
    this.write(`MAIL ${size}\n`);
    this.write(headersRaw);
    this.write('\n');
  }

  sendAbort(): void {
    this.write('ABORT\n');
  }

  /** DATA and exactly `size` bytes, with backpressure. */
  async sendData(source: Buffer | Readable | AsyncIterable<Buffer>, size: number): Promise<void> {
    this.write('DATA\n');
    if (Buffer.isBuffer(source)) {
      if (source.length !== size) throw tempFail(`message is ${source.length} bytes, not the ${size} announced`);
      if (!this.write(source)) await this.drained();
      return;
    }
    let n = 0;
    for await (const chunk of source as AsyncIterable<Buffer>) {
      n += chunk.length;
      if (n > size) throw tempFail(`message longer than the ${size} bytes announced`);
      if (!this.write(chunk)) await this.drained();
    }
    if (n !== size) throw tempFail(`message is ${n} bytes, not the ${size} announced`);
  }

  private async drained(): Promise<void> {
    const lost = () => tempFail(`${this.opts.domain}: connection lost while sending data`, '4.4.2');
    if (this.socket.destroyed) throw lost();
    await new Promise<void>((res, rej) => {
      const done = (ok: boolean) => () => {
        this.socket.off('drain', onDrain);
        this.socket.off('close', onClose);
        if (ok) res();
        else rej(lost());
      };
      const onDrain = done(true);
      const onClose = done(false);
      this.socket.on('drain', onDrain);
      this.socket.on('close', onClose);
    });
  }

  /** The next answer: REPLY lines, then one ACCEPT/REJECT/final/ERROR/BYE line. */
  async readAnswer(timeout = this.opts.timeout): Promise<Answer> {
    const replies: string[] = [];
    this.reader.limits = { ...this.reader.limits, idleTimeout: timeout };
    for (;;) {
      let line: string | null;
      try {
        line = await this.reader.readLine();
      } catch (e) {
        this.socket.destroy();
        const why = e instanceof LineError ? e.message : (e as Error).message;
        throw tempFail(`${this.opts.domain}: ${why}`, '4.4.2');
      }
      if (line === null) throw tempFail(`${this.opts.domain}: connection closed by the server${replies.length ? ` after: ${replies.at(-1)}` : ''}`, '4.4.2');
      const sp = line.indexOf(' ');
      const word = sp === -1 ? line : line.slice(0, sp);
      const text = sp === -1 ? '' : line.slice(sp + 1);
      if (word === 'REPLY') {
        if (replies.length < 10_000) replies.push(text);
        continue;
      }
      if (word === 'REJECT') {
        const m = /^([45]\.\d{1,3}\.\d{1,3}) ?(.*)$/.exec(text);
        return { word, status: m?.[1] ?? '4.0.0', text: m ? m[2] : text, replies };
      }
      return { word, text, replies };
    }
  }

  /** The result of DATA: REPLY lines and the final status. */
  readResult(): Promise<Answer> {
    return this.readAnswer(this.opts.resultTimeout ?? 10 * 60_000);
  }

  /** DONE, wait for BYE (or the close), and close. */
  async done(): Promise<void> {
    if (this.socket.destroyed) return;
    this.write('DONE\n');
    await this.readAnswer().catch(() => undefined);
    this.socket.end();
  }

  close(): void {
    this.socket.destroy();
  }
}
