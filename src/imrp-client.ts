// The client side of IMRP: connect over TLS (the server's certificate must
// chain to the configured CAs and cover the server's name), read the
// greeting, log in. Commands may be pipelined; answers come in order.
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import tls, { type SecureContextOptions, type TLSSocket } from 'node:tls';
import { Failure, tempFail } from './failure.js';
import { MAX_LINE } from './imrp.js';
import { LineError, LineReader } from './lines.js';
import { certCoversDomain, explainCertError } from './tls.js';

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
  private constructor(readonly socket: TLSSocket, readonly reader: LineReader, readonly where: string) {}

  static async connect(o: ConnectOptions): Promise<ImrpClient> {
    const where = `${o.host}:${o.port}`;
    const socket = tls.connect({
      ...o.tls,
      host: o.host,
      port: o.port,
      servername: /^[\d.:]+$/.test(o.serverName) ? undefined : o.serverName,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
      checkServerIdentity: (_h, cert) =>
        cert?.raw && certCoversDomain(new X509Certificate(cert.raw), o.serverName) ? undefined : new Error(`the server's certificate does not cover ${o.serverName}`),
    });
    const timer = setTimeout(() => socket.destroy(Object.assign(new Error(`no answer within ${o.timeout / 1000} s`), { code: 'ETIMEDOUT' })), o.timeout);
    try {
      await once(socket, 'secureConnect');
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      const why = err.code && /CERT|SELF_SIGNED|ISSUER|VERIFY/.test(err.code) ? explainCertError(err.code, true, 'server') : `${err.code ?? ''} ${err.message}`.trim();
      throw tempFail(`${where}: ${why}`, '4.4.1');
    } finally {
      clearTimeout(timer);
    }
    const c = new ImrpClient(socket, new LineReader(socket, { maxLine: MAX_LINE, idleTimeout: o.timeout, dataTimeout: o.timeout }), where);
    const greeting = await c.line();
    if (!/^IMRP 1( |$)/.test(greeting)) throw tempFail(`${where}: not an IMRP server: "${greeting.slice(0, 80)}"`);
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

  close(): void {
    if (!this.socket.destroyed) {
      this.socket.end('QUIT\n');
      this.socket.destroySoon();
    }
  }
}
