// Certificate generation for private federations, tests and the demo.
// node-forge is used to *build and sign* certificates only: nothing in the
// toolkit ever verifies a certificate with it (its verification code has had
// forgery and constraint-bypass bugs). Keys come from Node's own crypto,
// which is native and fast; every check is done by Node's tls and
// crypto.X509Certificate (src/tls.ts).
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import forge from 'node-forge';

export interface Issued {
  certPem: string;
  keyPem: string;
}

export interface Validity {
  /** Start of validity; default now minus five minutes (clock skew). */
  notBefore?: Date;
  days: number;
}

export type Purpose = 'server' | 'user';

const DAY = 86_400_000;

function newKey(bits: number): { forgeKey: forge.pki.rsa.PrivateKey; forgePub: forge.pki.rsa.PublicKey; keyPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: bits,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  return {
    forgeKey: forge.pki.privateKeyFromPem(privateKey) as forge.pki.rsa.PrivateKey,
    forgePub: forge.pki.publicKeyFromPem(publicKey) as forge.pki.rsa.PublicKey,
    keyPem: privateKey,
  };
}

/** A positive random 128-bit serial number, as RFC 5280 asks (no more than 20 octets). */
function serial(): string {
  const b = randomBytes(16);
  b[0] &= 0x7f;
  b[0] |= 0x01;
  return b.toString('hex');
}

/** A certificate for the key with a fresh serial and its validity set; subject, issuer and extensions to follow. */
function newCertificate(key: ReturnType<typeof newKey>, v: Validity): forge.pki.Certificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = key.forgePub;
  cert.serialNumber = serial();
  const from = v.notBefore ?? new Date(Date.now() - 5 * 60_000);
  cert.validity.notBefore = from;
  cert.validity.notAfter = new Date(from.getTime() + v.days * DAY);
  return cert;
}

/**
 * Subject attributes as UTF8String, as RFC 5280 4.1.2.6 wants of new
 * certificates. node-forge's default is PrintableString, which has no "@",
 * "_" or non-ASCII letter, and it wrote them anyway: a user certificate for
 * a_b@b.test or a CA named "Bücher CA" held a string no strict parser takes.
 */
function subjectOf(commonName: string, organization: string): forge.pki.CertificateField[] {
  const utf8 = forge.asn1.Type.UTF8 as unknown as forge.asn1.Class; // the typings name the tag's type "Class"
  return [
    { name: 'commonName', value: commonName, valueTagClass: utf8 },
    { name: 'organizationName', value: organization, valueTagClass: utf8 },
  ];
}

/**
 * The CA's subject as a leaf's issuer, byte for byte: forge reads a UTF8String
 * as its raw bytes but encodes the value it is given as UTF-8 again, so copied
 * as read a non-ASCII CA name came out twice encoded and named no CA.
 */
function issuerOf(ca: forge.pki.Certificate): forge.pki.CertificateField[] {
  return ca.subject.attributes.map((a) =>
    a.valueTagClass === (forge.asn1.Type.UTF8 as unknown as forge.asn1.Class) && typeof a.value === 'string'
      ? { ...a, value: forge.util.decodeUtf8(a.value) }
      : a,
  );
}

/** A self-signed CA that can only sign end-entity certificates (pathLen 0). */
export function makeCa(name: string, organization: string, v: Validity, bits = 3072): Issued {
  const key = newKey(bits);
  const cert = newCertificate(key, v);
  const subject = subjectOf(name, organization);
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, pathLenConstraint: 0, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  cert.sign(key.forgeKey, forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert), keyPem: key.keyPem };
}

export interface LeafSpec {
  purpose: Purpose;
  /** The subject common name: the first domain, or the user name. */
  commonName: string;
  /** DNS names (ASCII form) for a server; empty for a user. */
  dnsNames: string[];
  /** An e-mail address for a user certificate, when the name is one: ASCII (an rfc822Name is an IA5String), its domain an A-label. */
  email?: string;
  organization: string;
  /** Override the purposes (tests make the certificates public CAs issue since 2026: serverAuth only). */
  extKeyUsage?: ('serverAuth' | 'clientAuth')[];
}

/**
 * An end-entity certificate signed by the CA. Server certificates carry both
 * serverAuth and clientAuth: an IMDP server is a TLS client when it sends.
 * User certificates carry clientAuth only (post-office logins).
 */
export function makeLeaf(ca: Issued, spec: LeafSpec, v: Validity, bits = 2048): Issued {
  const caCert = forge.pki.certificateFromPem(ca.certPem);
  const caKey = forge.pki.privateKeyFromPem(ca.keyPem);
  const key = newKey(bits);
  const cert = newCertificate(key, v);
  cert.setSubject(subjectOf(spec.commonName, spec.organization));
  cert.setIssuer(issuerOf(caCert));
  const altNames = [...spec.dnsNames.map((value) => ({ type: 2, value })), ...(spec.email ? [{ type: 1, value: spec.email }] : [])];
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    {
      name: 'extKeyUsage',
      ...Object.fromEntries((spec.extKeyUsage ?? (spec.purpose === 'server' ? ['serverAuth', 'clientAuth'] : ['clientAuth'])).map((k) => [k, true])),
    },
    ...(altNames.length ? [{ name: 'subjectAltName', altNames }] : []),
    { name: 'subjectKeyIdentifier' },
    { name: 'authorityKeyIdentifier', keyIdentifier: caCert.generateSubjectKeyIdentifier().getBytes() },
  ]);
  cert.sign(caKey as forge.pki.rsa.PrivateKey, forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert), keyPem: key.keyPem };
}
