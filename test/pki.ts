// Test PKI: a CA and certificates written to a temporary directory, made
// in-process with the same code make-cert uses (fast: no process per file).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
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
  user(name: string, opts: { validity?: Validity; file?: string } = {}): CertFiles {
    const spec = { purpose: 'user' as const, commonName: name, dnsNames: [], organization: 'test' };
    return this.save(opts.file ?? name, makeLeaf(this.ca, spec, opts.validity ?? { days: 30 }));
  }
}

/** A validity that ended yesterday. */
export const EXPIRED: Validity = { notBefore: new Date(Date.now() - 10 * 86_400_000), days: 9 };
