// SMTP delivery of one MIME message to one domain's recipients, with
// nodemailer's SMTPConnection: the hosts in order (MX preference or the
// smarthost), the next host only while nothing was said about a recipient
// (connection refused, timeout, greeting or EHLO refused, TLS trouble);
// STARTTLS whenever offered, PIPELINING when offered; one outcome per
// recipient: 2xx OK, 4xx TEMPFAIL, 5xx FAIL, a broken connection TEMPFAIL.
import { Readable } from 'node:stream';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { Failure } from '../failure.js';
import type { Log } from '../log.js';
import type { Dns } from '../net/dns.js';

/**
 * How a connection is protected. may: STARTTLS when offered, certificate not
 * checked (RFC 7435 opportunistic, as Postfix's "may"); verify: STARTTLS
 * required and the certificate must chain to the CAs and name the host;
 * implicit: TLS from the first byte (port 465), verified the same way;
 * none: plaintext even when STARTTLS is offered (only as the second try
 * after a failed opportunistic handshake, as Postfix does).
 */
export type TlsMode = 'may' | 'verify' | 'implicit' | 'none';

export interface Peer {
  /** Host name: where to connect, and what a verified certificate must name. */
  host: string;
  port: number;
  tls: TlsMode;
  auth?: { user: string; pass: string };
}

export interface Envelope {
  /** MAIL FROM address; '' for the null sender. */
  from: string;
  /** RCPT TO addresses (domains in ASCII). */
  to: string[];
}

export interface Message {
  size: number;
  /** A fresh stream of the CRLF MIME message, each time it is called. */
  open: () => Readable;
  /** Some of it is 8bit: it needs a server with 8BITMIME (RFC 6152), or sevenBit's form. */
  eightBit?: boolean;
  /** Its header section has UTF-8: it needs a server with SMTPUTF8 (RFC 6531). */
  utf8Headers?: boolean;
  /** The same message with nothing in 8bit, for a server without 8BITMIME. */
  sevenBit?: () => Promise<Message>;
}

export interface Outcome {
  word: 'OK' | 'FAIL' | 'TEMPFAIL';
  reason: string;
}

export interface SendOptions {
  /** Our name in EHLO. */
  helo: string;
  /** CAs a verified certificate must chain to (undefined: Node's/the system's). */
  ca?: (string | Buffer)[];
  timeouts: { connect: number; command: number };
  dns: Dns;
  log: Log;
  /** Aborted when the caller stops the run (a stage timeout, a shutdown): connections close, nothing more is tried. */
  signal?: AbortSignal;
}

interface SmtpError extends Error {
  code?: string;
  command?: string;
  response?: string;
  responseCode?: number;
  recipient?: string;
  rejectedErrors?: SmtpError[];
}

/** The host could not take the transaction: try the next one. */
class HostTrouble extends Error {
  constructor(
    message: string,
    /** It was the TLS handshake (or the STARTTLS command) that failed. */
    readonly tls = false,
  ) {
    super(message);
  }
}

/** The caller aborted the run (io.signal): try nothing more. */
class Stopped extends Error {}

/** "5.1.1 mx.b.test said: 550 5.1.1 <bob@b.test>: ..." */
function said(where: string, response: string, code: number): string {
  const enhanced = /^\d{3}[ -](\d\.\d{1,3}\.\d{1,3})\b/.exec(response)?.[1];
  const status = enhanced ?? (code >= 500 ? '5.0.0' : '4.0.0');
  return `${status} ${where} said: ${response.replace(/\s+/g, ' ').trim()}`;
}

function outcomeOf(where: string, e: SmtpError): Outcome {
  const code = e.responseCode;
  if (code && code >= 500 && code < 600) return { word: 'FAIL', reason: said(where, e.response!, code) };
  if (code && code >= 400) return { word: 'TEMPFAIL', reason: said(where, e.response!, code) };
  // Larger than the SIZE the server announced: nodemailer refuses before MAIL,
  // with no reply. The server's 552 would have been permanent; so is this.
  if (e.code === 'EMESSAGE' && e.command === 'MAIL FROM') return { word: 'FAIL', reason: `5.3.4 ${where}: ${e.message}` };
  return { word: 'TEMPFAIL', reason: `4.4.2 ${where}: ${e.message}` };
}

/**
 * Deliver to the first host that takes the transaction. Every recipient gets
 * an outcome; when no host could be reached they are all TEMPFAIL with what
 * each host did, so the operator sees why.
 */
export async function deliver(peers: Peer[], env: Envelope, msg: Message, opts: SendOptions, noAddressIsFinal = false): Promise<Map<string, Outcome>> {
  const troubles: string[] = [];
  // Every host answered by DNS with no address at all: nothing to retry.
  let noAddressAnywhere = peers.length > 0;
  for (const peer of peers) {
    if (opts.signal?.aborted) break;
    let addresses: string[];
    try {
      addresses = await opts.dns.addresses(peer.host);
    } catch (e) {
      troubles.push((e as Error).message);
      noAddressAnywhere = false;
      continue;
    }
    if (addresses.length === 0) troubles.push(`${peer.host}: no address (A/AAAA)`);
    else noAddressAnywhere = false;
    for (const address of addresses) {
      if (opts.signal?.aborted) break;
      const where = address === peer.host ? `${peer.host}:${peer.port}` : `${peer.host}[${address}]:${peer.port}`;
      try {
        return await attemptWithFallback(peer, address, where, env, msg, opts);
      } catch (e) {
        if (e instanceof Stopped) break;
        if (!(e instanceof HostTrouble)) throw e;
        opts.log.info(`${where}: ${e.message}; trying the next host`);
        troubles.push(`${where}: ${e.message}`);
      }
    }
  }
  if (opts.signal?.aborted) troubles.push('stopped by the caller');
  else if (noAddressIsFinal && noAddressAnywhere) {
    // RFC 5321 5.1: MX hosts that are all unusable, or an implicit MX (the
    // domain itself) without an address, are an error, not a delay: the
    // domain receives no mail. Postfix bounces it too ("Host or domain name
    // not found", 5.4.4).
    const why = `5.4.4 the domain's mail hosts have no address: ${troubles.join('; ')}`;
    return new Map(env.to.map((r) => [r, { word: 'FAIL', reason: why }]));
  }
  const why = `4.4.1 no host took the message: ${troubles.join('; ') || 'no hosts'}`;
  return new Map(env.to.map((r) => [r, { word: 'TEMPFAIL', reason: why }]));
}

/** Opportunistic TLS that fails is no reason to hold mail: once more in plaintext (RFC 7435, Postfix's "may"). */
async function attemptWithFallback(peer: Peer, address: string, where: string, env: Envelope, msg: Message, opts: SendOptions): Promise<Map<string, Outcome>> {
  try {
    return await attempt(peer, address, where, env, msg, opts);
  } catch (e) {
    if (!(e instanceof HostTrouble && e.tls && peer.tls === 'may')) throw e;
    opts.log.info(`${where}: ${e.message}; once more without TLS, as opportunistic TLS allows`);
    return attempt({ ...peer, tls: 'none' }, address, where, env, msg, opts);
  }
}

function connectionOptions(peer: Peer, address: string, opts: SendOptions): SMTPConnection.Options {
  const verify = peer.tls === 'verify' || peer.tls === 'implicit';
  return {
    host: address,
    port: peer.port,
    name: opts.helo,
    secure: peer.tls === 'implicit',
    requireTLS: peer.tls === 'verify',
    ignoreTLS: peer.tls === 'none',
    servername: /^[\d.:]+$/.test(peer.host) ? undefined : peer.host,
    connectionTimeout: opts.timeouts.connect,
    greetingTimeout: opts.timeouts.connect,
    socketTimeout: opts.timeouts.command,
    socketCloseTimeout: 0,
    tls: {
      rejectUnauthorized: verify,
      minVersion: 'TLSv1.2',
      ...(verify && opts.ca ? { ca: opts.ca } : {}),
      ...(verify ? { servername: peer.host } : {}),
    },
    logger: false,
  };
}

/** One connection: up to MAIL FROM a failure is the host's (HostTrouble); from there on the answers are about the recipients. */
async function attempt(peer: Peer, address: string, where: string, env: Envelope, msg: Message, opts: SendOptions): Promise<Map<string, Outcome>> {
  const conn = new SMTPConnection(connectionOptions(peer, address, opts));
  let lastError: SmtpError | undefined;
  conn.on('error', (e: SmtpError) => {
    lastError = e;
  });
  // close() makes the connection forget its callbacks, so the abort itself ends the wait.
  let stop = () => {};
  const aborted = new Promise<never>((_, reject) => {
    stop = () => {
      conn.close();
      reject(new Stopped());
    };
  });
  aborted.catch(() => {});
  opts.signal?.addEventListener('abort', stop, { once: true });
  try {
    if (opts.signal?.aborted) throw new Stopped();
    return await Promise.race([session(conn, peer, where, env, msg, opts), aborted]);
  } finally {
    opts.signal?.removeEventListener('abort', stop);
    if (lastError) opts.log.debug(`${where}: ${lastError.message}`);
  }
}

async function session(conn: SMTPConnection, peer: Peer, where: string, env: Envelope, msg: Message, opts: SendOptions): Promise<Map<string, Outcome>> {
  try {
    await new Promise<void>((res, rej) => {
      conn.once('error', rej);
      conn.connect((e) => (e ? rej(e) : res()));
    });
    if ((peer.tls === 'verify' || peer.tls === 'implicit') && !conn.secure) throw new HostTrouble('no TLS, and this host requires it');
    if (peer.auth) {
      await new Promise<void>((res, rej) => conn.login(peer.auth!, (e) => (e ? rej(e) : res())));
    }
  } catch (e) {
    conn.close();
    if (e instanceof HostTrouble) throw e;
    const err = e as SmtpError;
    const what = err.command && err.command !== 'CONN' ? `${err.command}: ` : '';
    const tls = conn.upgrading === true || err.code === 'ETLS' || err.command === 'STARTTLS';
    throw new HostTrouble(err.response ? `${what}${err.response.replace(/\s+/g, ' ')}` : `${what}${err.message}${err.code ? ` (${err.code})` : ''}`, tls);
  }
  opts.log.debug(`${where}: connected${conn.secure ? ' with TLS' : ''}`);
  try {
    const refused = utf8Refusal(conn, where, env, msg);
    if (refused) return new Map(env.to.map((r) => [r, refused]));
    return await transaction(conn, where, env, await formFor(conn, where, msg, opts));
  } finally {
    quit(conn);
  }
}

const extensionsOf = (conn: SMTPConnection) => (conn as unknown as { _supportedExtensions?: string[] })._supportedExtensions ?? [];
const NON_ASCII = /[^\x00-\x7f]/;

/**
 * A non-ASCII address in the envelope or UTF-8 in the header section needs
 * SMTPUTF8 (RFC 6531 3.4): without it the message cannot be sent as it is,
 * and there is no downgrade of an address. Refused for good, as Postfix does
 * ("SMTPUTF8 is required, but was not offered"), rather than sent raw to a
 * server that never agreed to read it. nodemailer asks for SMTPUTF8 on MAIL
 * FROM when the envelope needs it and the server offers it.
 */
function utf8Refusal(conn: SMTPConnection, where: string, env: Envelope, msg: Message): Outcome | undefined {
  const needs =
    NON_ASCII.test(env.from) || env.to.some((r) => NON_ASCII.test(r)) ? 'a non-ASCII address' : msg.utf8Headers ? 'UTF-8 in its header fields' : undefined;
  if (!needs || extensionsOf(conn).includes('SMTPUTF8')) return undefined;
  return { word: 'FAIL', reason: `5.6.7 ${where} does not offer SMTPUTF8, which this message needs (${needs})` };
}

/**
 * 8bit data goes only to a server that announced 8BITMIME, with BODY=8BITMIME
 * (RFC 6152 3); any other gets the message's 7bit form. Sending 8bit bytes
 * undeclared is what RFC 6152 forbids, and a strict server refuses or strips them.
 */
async function formFor(conn: SMTPConnection, where: string, msg: Message, opts: SendOptions): Promise<Message> {
  if (!msg.eightBit || !msg.sevenBit || extensionsOf(conn).includes('8BITMIME')) return msg;
  opts.log.debug(`${where}: no 8BITMIME: sending the message's 7bit form`);
  return msg.sevenBit();
}

function transaction(conn: SMTPConnection, where: string, env: Envelope, msg: Message): Promise<Map<string, Outcome>> {
  return new Promise((resolve) => {
    const stream = msg.open();
    conn.send({ from: env.from, to: env.to, size: msg.size, use8BitMime: true }, stream, (err, info) => {
      const out = new Map<string, Outcome>();
      // What the server said about each recipient at RCPT time (kept by the connection even when the send fails later).
      const envelope = (conn as unknown as { _envelope?: { rejectedErrors?: SmtpError[] } })._envelope;
      const e = err as SmtpError | null;
      const rejected = e?.command === 'MAIL FROM' ? [] : (e?.rejectedErrors ?? info?.rejectedErrors ?? envelope?.rejectedErrors ?? []);
      for (const r of rejected as SmtpError[]) if (r.recipient) out.set(r.recipient, outcomeOf(where, r));
      const rest: Outcome = e ? outcomeOf(where, e) : { word: 'OK', reason: '' };
      for (const r of env.to) if (!out.has(r)) out.set(r, rest);
      if (e) stream.destroy();
      resolve(out);
    });
  });
}

/** QUIT politely, but never wait long for a peer to close. */
function quit(conn: SMTPConnection): void {
  const timer = setTimeout(() => conn.close(), 5000);
  timer.unref();
  conn.once('end', () => clearTimeout(timer));
  try {
    conn.quit();
  } catch {
    conn.close();
  }
}

/** How one recipient domain is reached. */
export interface Route {
  /** Everything goes here when set; otherwise the domain's MX hosts. */
  smarthost?: Peer;
  mxPort: number;
  tls: TlsMode;
}

/** One domain: its hosts (the smarthost, or MX in preference order), then the transaction; an outcome for every recipient. */
export async function deliverDomain(domain: string, env: Envelope, msg: Message, route: Route, opts: SendOptions): Promise<Map<string, Outcome>> {
  let peers: Peer[];
  if (route.smarthost) peers = [route.smarthost];
  else {
    try {
      const { hosts } = await opts.dns.mx(domain);
      peers = hosts.map((host) => ({ host, port: route.mxPort, tls: route.tls }));
    } catch (e) {
      if (!(e instanceof Failure)) throw e;
      const outcome: Outcome = { word: e.temporary ? 'TEMPFAIL' : 'FAIL', reason: `${e.status} ${e.message}` };
      return new Map(env.to.map((r) => [r, outcome]));
    }
  }
  // A smarthost without an address is the operator's to fix: its mail waits.
  const results = await deliver(peers, env, msg, opts, !route.smarthost);
  for (const r of env.to) if (!results.has(r)) results.set(r, { word: 'TEMPFAIL', reason: '4.0.0 no answer for this recipient' });
  return results;
}

/** A Spool-like source as a stream. */
export function asStream(x: Readable | Buffer): Readable {
  return Buffer.isBuffer(x) ? Readable.from([x]) : x;
}
