// make-cert: create a private CA, server certificates (serverAuth and
// clientAuth, for IMDP both ways) and user certificates (clientAuth, for
// post-office logins), as PEM files; private keys mode 0600.
//
// It does not verify, renew, revoke or publish anything, and never
// overwrites an existing file unless told to (--force). It generates with
// node-forge; everything else in the toolkit verifies with Node's own TLS.
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Argv } from 'yargs';
import { AddressError, asciiDomain, parseMailbox } from '../address.js';
import { type Issued, type Validity, makeCa, makeLeaf } from '../cert.js';
import { start } from '../cli.js';
import { integer, optional, string, table } from '../config.js';
import { EXIT, cantCreate, noInput, usageError } from '../failure.js';
import { writeFileAtomic } from '../files.js';
import type { Io } from '../io.js';

/** A hundred years: the config's bound and --days's, past which notAfter was "Bad time value" (--days 1e12) or beyond any use. */
const MAX_DAYS = 36500;

const schema = table({
  organization: optional(string({ nonEmpty: true }), 'IMA private federation'),
  ca_days: optional(integer({ min: 1, max: MAX_DAYS }), 3650),
  server_days: optional(integer({ min: 1, max: MAX_DAYS }), 397),
  user_days: optional(integer({ min: 1, max: MAX_DAYS }), 397),
  key_bits: optional(integer({ min: 2048, max: 8192 }), 2048),
  ca_key_bits: optional(integer({ min: 2048, max: 8192 }), 3072),
});

const usage = `$0 ca DIR                       create a CA: DIR/ca.crt, DIR/ca.key
$0 server --ca DIR DOMAIN...     server certificate: DOMAIN.crt, DOMAIN.key
$0 user --ca DIR NAME            user certificate: NAME.crt, NAME.key`;

const options = (y: Argv) =>
  y
    .option('ca', { type: 'string', describe: 'CA directory holding ca.crt and ca.key (server, user)', requiresArg: true })
    .option('out', { alias: 'o', type: 'string', describe: 'Directory to write to (default: the CA directory)', requiresArg: true })
    .option('name', { type: 'string', describe: 'CA common name (ca)', requiresArg: true })
    .option('days', { type: 'number', describe: 'Days of validity (default from the config)', requiresArg: true })
    .option('not-before', { type: 'string', describe: 'Start of validity, RFC 3339 (default: now)', requiresArg: true })
    .option('bits', { type: 'number', describe: 'RSA key size (default from the config)', requiresArg: true })
    .option('force', { type: 'boolean', describe: 'Overwrite existing files' });

const NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$/;

async function absent(path: string, force: boolean | undefined): Promise<void> {
  if (force) return;
  const exists = await stat(path).then(
    () => true,
    () => false,
  );
  if (exists) throw cantCreate(path, 'already exists (use --force to replace it)');
}

/** The directory for keys: created when missing, readable by its owner only. */
async function makeDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 }).catch((e: NodeJS.ErrnoException) => {
    throw cantCreate(dir, `cannot create (${e.code})`);
  });
}

async function save(dir: string, base: string, issued: Issued, force: boolean | undefined): Promise<string[]> {
  await makeDir(dir);
  const crt = join(dir, `${base}.crt`);
  const key = join(dir, `${base}.key`);
  await absent(crt, force);
  await absent(key, force);
  await writeFileAtomic(key, async (out) => void out.end(issued.keyPem), 0o600);
  await writeFileAtomic(crt, async (out) => void out.end(issued.certPem), 0o644);
  return [crt, key];
}

async function loadCa(dir: string | undefined, cwd: string): Promise<{ dir: string; ca: Issued }> {
  if (!dir) throw usageError('give the CA directory with --ca DIR (made by "make-cert ca DIR")');
  const full = resolve(cwd, dir);
  const read = (f: string) =>
    readFile(join(full, f), 'utf8').catch((e: NodeJS.ErrnoException) => {
      throw noInput(join(full, f), e.code === 'ENOENT' ? 'no such file (make one with "make-cert ca DIR")' : `cannot read (${e.code})`);
    });
  return { dir: full, ca: { certPem: await read('ca.crt'), keyPem: await read('ca.key') } };
}

function validity(days: number | undefined, fallback: number, notBefore: string | undefined): Validity {
  const d = days ?? fallback;
  if (!Number.isInteger(d) || d < 1 || d > MAX_DAYS) throw usageError(`--days ${days}: must be a whole number of days, 1 to ${MAX_DAYS}`);
  if (notBefore === undefined) return { days: d };
  const t = new Date(notBefore);
  if (Number.isNaN(t.getTime())) throw usageError(`--not-before ${JSON.stringify(notBefore)}: not an RFC 3339 date`);
  // X.509 times end with the year 9999 (RFC 5280 4.1.2.5): past it, notAfter was written as "Bad time value".
  const end = new Date(t.getTime() + d * 86_400_000);
  if (t.getUTCFullYear() < 1950 || end.getUTCFullYear() > 9999) {
    throw usageError(`--not-before ${notBefore} with ${d} days: the validity must lie between the years 1950 and 9999`);
  }
  return { days: d, notBefore: t };
}

/**
 * A user's address as a certificate holds it: an rfc822Name is an IA5String
 * (ASCII), so the domain goes as its A-label and a non-ASCII local part is
 * refused. Written anyway it gave Latin-1 bytes or a file openssl cannot
 * load; RFC 9598's SmtpUTF8Mailbox would hold it, and is not made here.
 */
function certificateAddress(text: string): string {
  let a;
  try {
    a = parseMailbox(text);
  } catch (e) {
    if (e instanceof AddressError) throw usageError(e.message);
    throw e;
  }
  if (!/^[\x21-\x7e]+$/.test(a.local))
    throw usageError(
      `${text}: the local part "${a.local}" is not ASCII, and a certificate's e-mail name must be (an RFC 9598 SmtpUTF8Mailbox is not supported)`,
    );
  return `${a.local}@${a.asciiDomain}`;
}

export async function main(args: string[], io: Io): Promise<number> {
  const s = await start({ name: 'make-cert', role: 'user', usage, schema, options }, args, io);
  if (typeof s === 'number') return s;
  const { argv, config } = s;
  const [what, ...rest] = argv._.map(String);
  const bits = argv.bits;
  if (bits !== undefined && (!Number.isInteger(bits) || bits < 2048 || bits > 8192)) throw usageError('--bits: must be 2048 to 8192');
  let written: string[];
  if (what === 'ca') {
    if (rest.length !== 1) throw usageError('make-cert ca DIR: give exactly one directory');
    const dir = resolve(io.cwd, rest[0]);
    await makeDir(dir);
    const ca = makeCa(
      argv.name ?? `${config.organization} CA`,
      config.organization,
      validity(argv.days, config.ca_days, argv.notBefore),
      bits ?? config.ca_key_bits,
    );
    written = await save(dir, 'ca', ca, argv.force);
  } else if (what === 'server') {
    if (rest.length === 0) throw usageError('make-cert server --ca DIR DOMAIN...: give at least one domain');
    const domains = rest.map((d) => {
      try {
        return asciiDomain(d);
      } catch (e) {
        if (e instanceof AddressError) throw usageError(e.message);
        throw e;
      }
    });
    const { dir, ca } = await loadCa(argv.ca, io.cwd);
    const out = argv.out ? resolve(io.cwd, argv.out) : dir;
    const spec = { purpose: 'server' as const, commonName: domains[0], dnsNames: domains, organization: config.organization };
    written = await save(out, domains[0], makeLeaf(ca, spec, validity(argv.days, config.server_days, argv.notBefore), bits ?? config.key_bits), argv.force);
  } else if (what === 'user') {
    if (rest.length !== 1) throw usageError('make-cert user --ca DIR NAME: give exactly one user name or address');
    const name = rest[0];
    let email: string | undefined;
    if (name.includes('@')) email = certificateAddress(name);
    else if (!NAME.test(name)) throw usageError(`${JSON.stringify(name)}: a user name is letters, digits, ".", "_", "+", "-" (or give an address)`);
    const base = email ?? name;
    if (base.includes('/') || base.startsWith('.')) throw usageError(`${JSON.stringify(name)}: not usable as a file name`);
    const { dir, ca } = await loadCa(argv.ca, io.cwd);
    const out = argv.out ? resolve(io.cwd, argv.out) : dir;
    const spec = { purpose: 'user' as const, commonName: email ?? name, dnsNames: [], email, organization: config.organization };
    written = await save(out, base, makeLeaf(ca, spec, validity(argv.days, config.user_days, argv.notBefore), bits ?? config.key_bits), argv.force);
  } else {
    throw usageError(what === undefined ? 'say what to make: ca, server or user' : `unknown kind "${what}": expected ca, server or user`);
  }
  for (const f of written) io.stdout.write(`${f}\n`);
  return EXIT.OK;
}
