// Test PKI: a CA and certificates written to a temporary directory, made
// in-process with the same code make-cert uses (fast: no process per file).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateKeyPairSync } from 'node:crypto';
import forge from 'node-forge';
import { type Issued, type Validity, makeCa, makeLeaf } from '../src/cert.js';

export interface CertFiles {
  cert: string;
  key: string;
}

export class Pki {
  readonly ca: Issued;
  readonly caFile: string;
  constructor(
    readonly dir: string,
    name = 'test',
  ) {
    this.ca = makeCa(`${name} CA`, 'test', { days: 30 }, 2048);
    this.caFile = join(dir, `${name}-ca.crt`);
    writeFileSync(this.caFile, this.ca.certPem);
  }
  private save(base: string, issued: Issued): CertFiles {
    const cert = join(this.dir, `${base}.crt`);
    const key = join(this.dir, `${base}.key`);
    writeFileSync(cert, issued.certPem);
    writeFileSync(key, issued.keyPem, { mode: 0o600 });
    return { cert, key };
  }
  server(domain: string, opts: { validity?: Validity; file?: string; also?: string[]; serverAuthOnly?: boolean } = {}): CertFiles {
    const spec = {
      purpose: 'server' as const,
      commonName: domain,
      dnsNames: [domain, ...(opts.also ?? [])],
      organization: 'test',
      extKeyUsage: opts.serverAuthOnly ? ['serverAuth' as const] : undefined,
    };
    return this.save(opts.file ?? domain, makeLeaf(this.ca, spec, opts.validity ?? { days: 30 }));
  }
  /** A certificate make-cert would not issue (see OddSpec); `chain` appends the issuer's certificate to the file. */
  odd(base: string, spec: OddSpec, chain = false): CertFiles & Issued {
    const issued = oddCertificate(this.ca, spec);
    const files = this.save(base, chain && spec.issuer ? { ...issued, certPem: issued.certPem + spec.issuer.certPem } : issued);
    return { ...files, ...issued };
  }
  user(name: string, opts: { validity?: Validity; file?: string } = {}): CertFiles {
    const spec = { purpose: 'user' as const, commonName: name, dnsNames: [], organization: 'test' };
    return this.save(opts.file ?? name, makeLeaf(this.ca, spec, opts.validity ?? { days: 30 }));
  }
}

/** What make-cert never issues, for tests of refusals: any issuer, any extendedKeyUsage or none at all. */
export interface OddSpec {
  commonName: string;
  dnsNames?: string[];
  /** The purposes, or 'none' for no extendedKeyUsage extension at all. */
  eku: ('serverAuth' | 'clientAuth')[] | 'none';
  /** Signed by this (default: the CA); a leaf here makes a CA:false "intermediate". */
  issuer?: Issued;
  validity?: Validity;
  /** keyUsage keyCertSign on a CA:false certificate: the mis-issued "intermediate" some CAs have made. */
  keyCertSign?: boolean;
}

/** Build and sign one certificate with node-forge (generation only; nothing here verifies). */
export function oddCertificate(ca: Issued, spec: OddSpec): Issued {
  const issuer = spec.issuer ?? ca;
  const issuerCert = forge.pki.certificateFromPem(issuer.certPem);
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKey);
  cert.serialNumber = `01${Date.now().toString(16)}${Math.floor(Math.random() * 1e6).toString(16)}`;
  const v = spec.validity ?? { days: 30 };
  cert.validity.notBefore = v.notBefore ?? new Date(Date.now() - 5 * 60_000);
  cert.validity.notAfter = new Date(cert.validity.notBefore.getTime() + v.days * 86_400_000);
  cert.setSubject([{ name: 'commonName', value: spec.commonName }]);
  cert.setIssuer(issuerCert.subject.attributes);
  const names = spec.dnsNames ?? [];
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, keyCertSign: !!spec.keyCertSign, critical: true },
    ...(spec.eku === 'none' ? [] : [{ name: 'extKeyUsage', ...Object.fromEntries(spec.eku.map((k) => [k, true])) }]),
    ...(names.length ? [{ name: 'subjectAltName', altNames: names.map((value) => ({ type: 2, value })) }] : []),
    { name: 'subjectKeyIdentifier' },
    { name: 'authorityKeyIdentifier', keyIdentifier: issuerCert.generateSubjectKeyIdentifier().getBytes() },
  ]);
  cert.sign(forge.pki.privateKeyFromPem(issuer.keyPem) as forge.pki.rsa.PrivateKey, forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert), keyPem: privateKey };
}

/** A validity that ended yesterday. */
export const EXPIRED: Validity = { notBefore: new Date(Date.now() - 10 * 86_400_000), days: 9 };
