// DKIM for outgoing legacy mail (RFC 6376, RFC 8463): the keys of each sender
// domain from smtp-send's config (RSA and Ed25519, any number per domain),
// signatures made with mailauth over a stream of the finished MIME message
// (it hashes as it reads, so memory stays flat), and the DNS TXT record an
// operator publishes for each key.
import { type KeyObject, createPrivateKey, createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { dkimSign } from 'mailauth/lib/dkim/sign.js';
import { asciiDomain } from '../address.js';
import { type Located, configPath } from '../config.js';
import { configError, tempFail } from '../failure.js';

export interface DkimKey {
  /** The d= domain, ASCII. */
  domain: string;
  selector: string;
  algorithm: 'rsa-sha256' | 'ed25519-sha256';
  privateKey: KeyObject;
  pem: string;
}

export interface DkimEntry {
  domain: string;
  selector: string;
  key: string;
}

/** Read and check every [[dkim]] key; a bad one names the config key and the file (exit 78). */
export function loadDkimKeys(entries: readonly DkimEntry[], source: Located, configFile: string): DkimKey[] {
  return entries.map((e, i) => {
    const where = `dkim[${i}].key`;
    const file = configPath(source, e.key);
    let pem: string;
    try {
      pem = readFileSync(file, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw configError(configFile, where, `${file}: ${code === 'ENOENT' ? 'no such file' : `cannot read (${code})`}`);
    }
    let privateKey: KeyObject;
    try {
      privateKey = createPrivateKey(pem);
    } catch {
      throw configError(configFile, where, `${file}: not a PEM private key`);
    }
    const type = privateKey.asymmetricKeyType;
    if (type === 'rsa' && (privateKey.asymmetricKeyDetails?.modulusLength ?? 0) < 1024)
      throw configError(configFile, where, `${file}: an RSA key for DKIM needs at least 1024 bits (2048 recommended)`);
    if (type !== 'rsa' && type !== 'ed25519') throw configError(configFile, where, `${file}: a ${type} key; DKIM signs with RSA or Ed25519`);
    return { domain: asciiDomain(e.domain), selector: e.selector, algorithm: type === 'rsa' ? 'rsa-sha256' : 'ed25519-sha256', privateKey, pem };
  });
}

/** The keys that sign for a sender domain. */
export function keysFor(keys: readonly DkimKey[], domain: string): DkimKey[] {
  return keys.filter((k) => k.domain === domain);
}

/** The DKIM-Signature header lines (CRLF-terminated) for the message the stream carries. */
export async function dkimSignatures(keys: readonly DkimKey[], message: Readable): Promise<string> {
  if (keys.length === 0) return '';
  const result = await dkimSign(message, {
    canonicalization: 'relaxed/relaxed',
    // Without signTime, mailauth reads the clock twice for t= (rounded to the
    // second): once for the header it signs, once for the header it returns.
    // A half-second boundary between the two (1 message in ~1000 on this
    // machine) gave a signature that no verifier accepts.
    signTime: new Date(),
    signatureData: keys.map((k) => ({ signingDomain: k.domain, selector: k.selector, privateKey: k.pem, algorithm: k.algorithm })),
  } as Parameters<typeof dkimSign>[1]);
  if (result.errors?.length) throw tempFail(`DKIM signing failed: ${result.errors.map((e) => e.message).join('; ')}`);
  return result.signatures;
}

/** The TXT record to publish for a key: "SELECTOR._domainkey.DOMAIN. IN TXT ( "v=DKIM1; k=...; p=..." )", split in 255-byte strings. */
export function dkimRecord(k: DkimKey): string {
  const pub = createPublicKey(k.privateKey);
  // RSA: the SubjectPublicKeyInfo DER (RFC 6376 3.6.1); Ed25519: the raw 32-byte key (RFC 8463 4.2).
  const p =
    k.algorithm === 'rsa-sha256'
      ? pub.export({ type: 'spki', format: 'der' }).toString('base64')
      : pub.export({ type: 'spki', format: 'der' }).subarray(-32).toString('base64');
  const text = `v=DKIM1; k=${k.algorithm === 'rsa-sha256' ? 'rsa' : 'ed25519'}; p=${p}`;
  const parts: string[] = [];
  for (let i = 0; i < text.length; i += 255) parts.push(`"${text.slice(i, i + 255)}"`);
  return `${k.selector}._domainkey.${k.domain}. IN TXT ( ${parts.join(' ')} )`;
}

/** The record's text alone, as DNS returns it joined. */
export function dkimRecordText(k: DkimKey): string {
  return [...dkimRecord(k).matchAll(/"([^"]*)"/g)].map((m) => m[1]).join('');
}
