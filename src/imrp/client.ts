// The client side of IMRP: connect over TLS (the server's certificate must
// chain to the configured CAs and cover the server's name), read the
// greeting, log in. Commands may be pipelined; answers come in order.
import type { SecureContextOptions, TLSSocket } from 'node:tls';
import { Failure, tempFail } from '../failure.js';
import { MAX_LINE } from './wire.js';
import { LineError, LineReader } from '../net/lines.js';
import { connectTls } from '../net/tls.js';
import { closeGently } from '../net/writes.js';

export interface ConnectOptions {
  host: string;
  port: number;
  /** The name the server's certificate must cover. */
  serverName: string;
  tls: SecureContextOptions;
  timeout: number;
}

export class LoginRefused extends Failure {
  constructor(reason: string) {
    super('permanent', reason, '5.7.8');
  }
}

export class ImrpClient {
  private constructor(
    readonly socket: TLSSocket,
    readonly reader: LineReader,
    readonly where: string,
    private readonly timeout: number,
  ) {}

  static async connect(o: ConnectOptions): Promise<ImrpClient> {
    const where = `${o.host}:${o.port}`;
    const socket = await connectTls({ host: o.host, port: o.port, name: o.serverName, tls: o.tls, timeout: o.timeout, where });
    const limits = { maxLine: MAX_LINE, idleTimeout: o.timeout, dataTimeout: o.timeout, commandTimeout: o.timeout, lineName: 'answer' };
    const c = new ImrpClient(socket, new LineReader(socket, limits), where, o.timeout);
    try {
      const greeting = await c.line();
      if (!/^IMRP 1( |$)/.test(greeting)) throw tempFail(`${where}: not an IMRP server: "${greeting.slice(0, 80)}"`);
    } catch (e) {
      socket.destroy(); // an open socket would keep the process waiting
      throw e;
    }
    return c;
  }

  /** Connect and log in; the connection is closed when the login fails. */
  static async connectAndLogin(o: ConnectOptions, user: string, password?: string): Promise<ImrpClient> {
    const c = await ImrpClient.connect(o);
    try {
      await c.login(user, password);
    } catch (e) {
      c.close();
      throw e;
    }
    return c;
  }

  send(line: string): void {
    this.socket.write(`${line}\n`);
  }

  /** The next line; the connection ending or stalling is temporary trouble. */
  async line(): Promise<string> {
    let l: string | null;
    try {
      l = await this.reader.readLine();
    } catch (e) {
      if (e instanceof LineError) throw tempFail(`${this.where}: ${e.message}`, '4.4.2');
      throw e;
    }
    if (l === null) throw tempFail(`${this.where}: connection closed by the server`, '4.4.2');
    if (l.startsWith('BYE ')) throw tempFail(`${this.where}: server said: ${l.slice(4)}`, '4.4.2');
    return l;
  }

  /** Expect OK; NO or ERROR become failures with the server's words. */
  async ok(what: string): Promise<string> {
    const l = await this.line();
    if (l === 'OK' || l.startsWith('OK ')) return l.slice(3);
    throw tempFail(`${this.where}: ${what}: ${l}`);
  }

  async login(user: string, password?: string): Promise<void> {
    this.send(password === undefined ? `LOGIN ${user}` : `LOGIN ${user} ${password}`);
    const l = await this.line();
    if (l === 'OK' || l.startsWith('OK ')) return;
    throw new LoginRefused(`${this.where}: login as ${user} refused: ${l.replace(/^NO /, '')}`);
  }

  /** QUIT and close; a server that takes nothing more is cut after the timeout instead of holding the process. */
  close(): void {
    closeGently(this.socket, this.timeout, 'QUIT\n');
  }
}
