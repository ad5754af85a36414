// TLS material and peer checks, shared by every network program. Only Node's
// tls and crypto.X509Certificate verify anything here: chains, dates and
// purposes are OpenSSL's verdict (socket.authorized), names are
// X509Certificate.checkHost on the ASCII form of a domain.
import { X509Certificate, createHash, createPrivateKey } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import tls, { type DetailedPeerCertificate, type PeerCertificate, type SecureContextOptions, type TLSSocket } from 'node:tls';
import { AddressError, asciiDomain } from '../address.js';
import { type Located, configPath, list, optional, string, table } from '../config.js';
import { configError, tempFail } from '../failure.js';

/** Where the TLS files named by a config are, and which config named them. */
export interface TlsPaths {
  certificate: string;
  key: string;
  /** CA certificate files the peers must chain to; empty = systemRoots(). */
  ca: string[];
  /** The config file and the keys, for error messages. */
  configFile: string;
  keys?: { certificate: string; key: string; ca: string };
}

export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
  /** Trusted CA certificates (PEM); systemRoots() when none was configured. */
  ca: (string | Buffer)[];
  /** Our own certificate, parsed. */
  x509: X509Certificate;
}

/** The [tls] table every network program's config has. */
export const tlsSchema = () =>
  table({
    certificate: string({ nonEmpty: true }),
    key: string({ nonEmpty: true }),
    ca: optional(list(string({ nonEmpty: true })), [] as string[]),
  });

/** Load the material a [tls] table names, paths relative to the config file. */
export function tlsFromConfig(t: { certificate: string; key: string; ca: readonly string[] }, source: Located, program: string, domain?: string): TlsMaterial {
  const configFile = source.file ?? `${program}.toml`;
  const material = loadTlsMaterial({
    certificate: configPath(source, t.certificate),
    key: configPath(source, t.key),
    ca: t.ca.map((f) => configPath(source, f)),
    configFile,
  });
  // Peers check exactly this; better to hear it at start than from every peer.
  if (domain !== undefined && !certCoversDomain(material.x509, domain)) {
    throw configError(
      configFile,
      'tls.certificate',
      `${t.certificate} does not cover domain ${domain} (it names ${material.x509.subjectAltName ?? material.x509.subject}); peers would refuse it`,
    );
  }
  return material;
}

/**
 * The "federation needs its own CA" explanation, for every place a peer
 * hits a certificate-purpose or unknown-CA failure.
 */
export const OWN_CA_NOTE =
  'public CAs stopped issuing clientAuth certificates in 2026, so an IMA federation runs its own CA (make-cert(1), ima(7)) and each server must trust it';

/** The trusted roots when no CA file is configured: the system store where Node can read it, else Node's bundled store. */
export function systemRoots(): string[] {
  const get = (tls as unknown as { getCACertificates?: (kind: string) => string[] }).getCACertificates;
  return get ? get('system') : [...tls.rootCertificates];
}

function readPem(file: string, configFile: string, key: string): Buffer {
  try {
    return readFileSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw configError(configFile, key, `${file}: ${code === 'ENOENT' ? 'no such file' : `cannot read (${code})`}`);
  }
}

/** Read and check certificate, key and CA files; errors name the config file, key and file. */
export function loadTlsMaterial(p: TlsPaths): TlsMaterial {
  const k = p.keys ?? { certificate: 'tls.certificate', key: 'tls.key', ca: 'tls.ca' };
  const cert = readPem(p.certificate, p.configFile, k.certificate);
  const key = readPem(p.key, p.configFile, k.key);
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch {
    throw configError(p.configFile, k.certificate, `${p.certificate}: not a PEM certificate`);
  }
  try {
    if (!x509.checkPrivateKey(createPrivateKey(key))) throw new Error('mismatch');
  } catch (e) {
    const what = (e as Error).message === 'mismatch' ? 'does not belong to the certificate' : 'not a PEM private key';
    throw configError(p.configFile, k.key, `${p.key}: ${what} ${p.certificate}`);
  }
  if (Date.parse(x509.validTo) < Date.now()) throw configError(p.configFile, k.certificate, `${p.certificate}: expired on ${x509.validTo}`);
  return { cert, key, ca: loadCaFiles(p.ca, p.configFile, k.ca), x509 };
}

/**
 * Read and check CA files (each must hold a PEM certificate), or the system's
 * roots when none is named; errors name the config file, key and file. A file
 * with no certificate would otherwise pass and make every peer look untrusted.
 */
export function loadCaFiles(files: readonly string[], configFile: string, key: string): (string | Buffer)[] {
  if (files.length === 0) return systemRoots();
  return files.map((f) => {
    const pem = readPem(f, configFile, key);
    try {
      new X509Certificate(pem);
    } catch {
      throw configError(configFile, key, `${f}: not a PEM certificate`);
    }
    return pem;
  });
}

/** Options for tls.createServer / tls.connect / setSecureContext from loaded material. */
export function contextOptions(m: TlsMaterial): SecureContextOptions {
  return { cert: m.cert, key: m.key, ca: m.ca, minVersion: 'TLSv1.2' };
}

/** Does the certificate name this domain (DNS subjectAltName, wildcards as RFC 6125)? IDNs compare in ASCII. */
export function certCoversDomain(x509: X509Certificate, domain: string): boolean {
  let ascii: string;
  try {
    ascii = asciiDomain(domain);
  } catch (e) {
    if (e instanceof AddressError) return false;
    throw e;
  }
  return x509.checkHost(ascii, { subject: 'never', wildcards: true, partialWildcards: false, singleLabelSubdomains: false }) !== undefined;
}

/** SHA-256 fingerprint as lowercase hex without colons. */
export function fingerprint256(x509: X509Certificate): string {
  return x509.fingerprint256.replace(/:/g, '').toLowerCase();
}

/** The peer's certificate as an X509Certificate, or undefined when it sent none. */
export function peerX509(socket: TLSSocket): X509Certificate | undefined {
  const getter = (socket as TLSSocket & { getPeerX509Certificate?: () => X509Certificate | undefined }).getPeerX509Certificate;
  if (getter) return getter.call(socket) ?? undefined;
  const pc = socket.getPeerCertificate() as PeerCertificate;
  return pc?.raw ? new X509Certificate(pc.raw) : undefined;
}

/** The certificates a peer sent after its own, nearest first. */
export function peerChain(socket: TLSSocket): X509Certificate[] {
  const chain: X509Certificate[] = [];
  const seen = new Set<string>();
  let c = socket.getPeerCertificate(true) as DetailedPeerCertificate | undefined;
  while (c?.issuerCertificate && c.issuerCertificate !== c && c.issuerCertificate.raw && !seen.has(c.issuerCertificate.fingerprint256)) {
    c = c.issuerCertificate;
    seen.add(c.fingerprint256);
    chain.push(new X509Certificate(c.raw));
  }
  return chain;
}

/** extendedKeyUsage clientAuth (RFC 5280 4.2.1.12). */
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

/**
 * The verdict on a client certificate, for a server: OpenSSL's (chain, dates)
 * plus what ima(7) asks beyond it: an extendedKeyUsage that names clientAuth
 * (OpenSSL takes a certificate without the extension for any purpose), and
 * the real reason when a chain fails at an issuer that is not a CA.
 */
export function clientVerdict(socket: TLSSocket): { cert?: X509Certificate; authorized: boolean; authError?: string } {
  // The chain first: once Node has handed out the peer's X509Certificate, getPeerCertificate(true) comes back without the chain.
  const chain = socket.authorized ? [] : peerChain(socket);
  const cert = peerX509(socket);
  if (!cert) return { authorized: false, authError: explainCertError(null, false) };
  if (!socket.authorized) {
    const notCa = chain.find((c) => !c.ca);
    if (notCa && cert.checkIssued(notCa)) {
      const who = notCa.subject.replace(/\n/g, ', ');
      return {
        cert,
        authorized: false,
        authError: `client certificate rejected: its issuer (${who}) is not a CA (basicConstraints CA:false), so it cannot vouch for another certificate; ${OWN_CA_NOTE}`,
      };
    }
    return { cert, authorized: false, authError: explainCertError(socket.authorizationError, true) };
  }
  const eku = cert.keyUsage;
  if (!eku?.includes(CLIENT_AUTH)) {
    const what = eku ? 'its extendedKeyUsage lacks clientAuth' : 'it has no extendedKeyUsage, and ima(7) requires one naming clientAuth';
    return { cert, authorized: false, authError: `client certificate rejected: ${what}; ${OWN_CA_NOTE}` };
  }
  return { cert, authorized: true };
}

/** Is the certificate within its validity dates now? A pinned certificate (certificate_sha256) must be. */
export function withinDates(x509: X509Certificate, now = Date.now()): boolean {
  return Date.parse(x509.validFrom) <= now && now <= Date.parse(x509.validTo);
}

/**
 * Why a peer's certificate was not accepted, in words a peer's operator can
 * act on. `error` is OpenSSL's code as Node reports it (socket.authorizationError).
 */
export function explainCertError(error: string | Error | null | undefined, hadCert: boolean, role: 'client' | 'server' = 'client'): string {
  if (!hadCert) return `no ${role} certificate: this server requires one (mutual TLS); ${OWN_CA_NOTE}`;
  const code = String((error as Error)?.message ?? error ?? 'not trusted');
  const ours = `${role} certificate rejected (${code})`;
  if (/PURPOSE/i.test(code)) return `${ours}: its extendedKeyUsage lacks ${role === 'client' ? 'clientAuth' : 'serverAuth'}; ${OWN_CA_NOTE}`;
  if (/ISSUER|SELF_SIGNED|UNABLE_TO_GET|UNABLE_TO_VERIFY|SELF SIGNED/i.test(code))
    return `${ours}: it does not chain to a CA trusted here (tls.ca); ${OWN_CA_NOTE}`;
  if (/EXPIRED/i.test(code)) return `${ours}: it has expired`;
  if (/NOT_YET_VALID/i.test(code)) return `${ours}: it is not valid yet`;
  return ours;
}

export interface ConnectTo {
  host: string;
  port: number;
  /** The name the server's certificate must cover (a domain; an IP address sends no SNI). */
  name: string;
  /** Our certificate and key, if any, and the CAs we trust. */
  tls: SecureContextOptions;
  /** ms for connect and handshake. */
  timeout: number;
  /** How errors name this peer. */
  where: string;
}

/**
 * What a client's TLS material is, as one digest: our certificate and key
 * and the CAs we trust (length-prefixed, so no two different sets read the
 * same). Undefined for options beyond those three or values other than
 * PEM text (a KeyObject, a passphrase): nothing is cached for them.
 */
function materialId(options: SecureContextOptions): string | undefined {
  const h = createHash('sha256');
  for (const [name, value] of Object.entries(options)) {
    if (value === undefined) continue;
    if (name !== 'cert' && name !== 'key' && name !== 'ca') return undefined;
    for (const v of [value].flat()) {
      if (typeof v !== 'string' && !Buffer.isBuffer(v)) return undefined;
      const bytes = typeof v === 'string' ? Buffer.from(v) : v;
      h.update(`${name}:${bytes.length}:`).update(bytes);
    }
  }
  return h.digest('hex');
}

/**
 * Secure contexts by material. Making one parses our key and certificate
 * and every CA, about 1 ms; a connection per message (a queue run, the
 * handshake benchmark) paid it each time: a resumed handshake on loopback
 * took 2.8 ms, 1.4 ms with the context kept.
 */
const contexts = new Map<string, tls.SecureContext>();

function contextFor(options: SecureContextOptions, id: string | undefined): tls.SecureContext {
  const made = id === undefined ? undefined : contexts.get(id);
  if (made) return made;
  const context = tls.createSecureContext({ ...options, minVersion: 'TLSv1.2' });
  if (id !== undefined) {
    if (contexts.size >= 20) contexts.clear();
    contexts.set(id, context);
  }
  return context;
}

/**
 * TLS sessions (tickets) from earlier connections, by server and identity:
 * a process that connects again (a queue run, a server relaying) resumes
 * instead of paying a full handshake. The server still proved its
 * certificate in the session resumed; the ticket is only offered to the
 * same host, port and name with the same certificate, key and CAs (a
 * session verified against other CAs is not trusted on).
 */
const sessions = new Map<string, Buffer>();

/**
 * Connect and complete the handshake with a server whose certificate chains
 * to our CAs and covers `name`. Every failure is temporary trouble with one
 * line a user can act on (4.7.5 for a certificate, 4.4.1 for the network).
 */
export async function connectTls(o: ConnectTo): Promise<TLSSocket> {
  const material = materialId(o.tls);
  const key = material === undefined ? undefined : `${o.host}\0${o.port}\0${o.name}\0${material}`;
  const socket = tls.connect({
    session: key === undefined ? undefined : sessions.get(key),
    secureContext: contextFor(o.tls, material),
    host: o.host,
    port: o.port,
    servername: /^[\d.:]+$/.test(o.name) ? undefined : o.name,
    rejectUnauthorized: true,
    checkServerIdentity: (_host, cert) =>
      cert?.raw && certCoversDomain(new X509Certificate(cert.raw), o.name)
        ? undefined
        : Object.assign(new Error(`the server's certificate does not cover ${o.name}`), { code: 'ERR_TLS_CERT_ALTNAME_INVALID' }),
  });
  socket.setNoDelay(true);
  socket.on('session', (ticket: Buffer) => {
    if (key === undefined) return;
    if (sessions.size >= 100) sessions.clear();
    sessions.set(key, ticket);
  });
  const timer = setTimeout(() => socket.destroy(Object.assign(new Error(`no handshake within ${o.timeout / 1000} s`), { code: 'ETIMEDOUT' })), o.timeout);
  try {
    await once(socket, 'secureConnect');
    return socket;
  } catch (e) {
    socket.destroy();
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ERR_TLS_CERT_ALTNAME_INVALID') throw tempFail(`${o.where}: ${err.message}`, '4.7.5');
    if (err.code && /CERT|SELF_SIGNED|ISSUER|VERIFY/.test(err.code)) throw tempFail(`${o.where}: ${explainCertError(err.code, true, 'server')}`, '4.7.5');
    throw tempFail(`${o.where}: ${err.code ?? ''} ${err.message}`.replace(/ +/g, ' '), '4.4.1');
  } finally {
    clearTimeout(timer);
  }
}
