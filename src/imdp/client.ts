// The IMDP client (ima(7)): send-mail's side of a connection, also used by
// the benchmarks and tests. Calls may be pipelined; answers come in order.
import { Readable } from 'node:stream';
import type { SecureContextOptions, TLSSocket } from 'node:tls';
import { tempFail } from '../failure.js';
import { LineError, LineReader } from '../net/lines.js';
import { connectTls } from '../net/tls.js';
import { WriteError, closeGently, drained } from '../net/writes.js';
import { chunksOf } from '../streams.js';
import { type Answer, MAX_LINE, VERSION, lineText } from './wire.js';

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
    const reader = new LineReader(socket, { maxLine: MAX_LINE, idleTimeout: opts.timeout, dataTimeout: opts.timeout, lineName: 'answer' });
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
    const chunks = source instanceof Readable ? chunksOf(source) : source;
    for await (const chunk of chunks) {
      n += chunk.length;
      if (n > size) throw tempFail(`message longer than the ${size} bytes announced`);
      if (!this.write(chunk)) await this.drained();
    }
    if (n !== size) throw tempFail(`message is ${n} bytes, not the ${size} announced`);
  }

  /** Wait until the server has taken what we wrote: a close, an error or no progress within the timeout is temporary trouble. */
  private async drained(): Promise<void> {
    try {
      await drained(this.socket, this.opts.timeout);
    } catch (e) {
      this.socket.destroy();
      if (!(e instanceof WriteError)) throw e;
      const why = e.kind === 'timeout' ? e.message.replace(/^peer/, 'the server') : `connection lost while sending data (${e.message})`;
      throw tempFail(`${this.opts.domain}: ${why}`, '4.4.2');
    }
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
    closeGently(this.socket, this.opts.timeout);
  }

  close(): void {
    this.socket.destroy();
  }
}
