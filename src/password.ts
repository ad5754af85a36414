// Passwords: stored only as scrypt hashes, compared in constant time.
// Format: scrypt$N$r$p$SALT$HASH (salt and hash base64).
import { randomBytes, scrypt as scryptCb, timingSafeEqual } from 'node:crypto';

const KEYLEN = 32;
const DEFAULTS = { N: 16384, r: 8, p: 1 };
const FORMAT = /^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/;

function derive(password: string, salt: Buffer, N: number, r: number, p: number): Promise<Buffer> {
  return new Promise((res, rej) => scryptCb(password.normalize('NFC'), salt, KEYLEN, { N, r, p, maxmem: 256 * N * r }, (e, k) => (e ? rej(e) : res(k))));
}

export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const { N, r, p } = DEFAULTS;
  const key = await derive(password, salt, N, r, p);
  return `scrypt$${N}$${r}$${p}$${salt.toString('base64')}$${key.toString('base64')}`;
}

/** A problem with a stored hash, or undefined when it is well-formed (config validation). */
export function hashProblem(stored: string): string | undefined {
  const m = FORMAT.exec(stored);
  if (!m) return 'must be a hash printed by "post-office --hash-password" (scrypt$N$r$p$salt$hash)';
  const N = Number(m[1]);
  if (N < 1024 || N > 1 << 20 || (N & (N - 1)) !== 0) return 'scrypt N must be a power of two from 1024 to 1048576';
  if (Number(m[2]) < 1 || Number(m[2]) > 32 || Number(m[3]) < 1 || Number(m[3]) > 16) return 'scrypt r or p out of range';
  return undefined;
}

const dummyOf = (N: number | string, r: number | string, p: number | string) =>
  `scrypt$${N}$${r}$${p}$${Buffer.alloc(16).toString('base64')}$${Buffer.alloc(KEYLEN).toString('base64')}`;
const DUMMY = dummyOf(DEFAULTS.N, DEFAULTS.r, DEFAULTS.p);

/** The parameters N, r, p of a stored hash, as "N$r$p". */
export function hashParameters(stored: string): string | undefined {
  const m = FORMAT.exec(stored);
  return m ? `${m[1]}$${m[2]}$${m[3]}` : undefined;
}

/**
 * The hash checked against when a user does not exist: a fixed salt and key
 * with the parameters most of the configured users' hashes have (the
 * defaults when none has one), so an unknown user costs what a typical known
 * one does and the two cannot be told apart by timing.
 */
export function dummyHash(configured: readonly (string | undefined)[]): string {
  const seen = new Map<string, number>();
  for (const h of configured) {
    const p = h === undefined ? undefined : hashParameters(h);
    if (p) seen.set(p, (seen.get(p) ?? 0) + 1);
  }
  const common = [...seen].sort((a, b) => b[1] - a[1])[0]?.[0];
  return common ? dummyOf(...(common.split('$') as [string, string, string])) : DUMMY;
}

/** Does the password match the stored hash? With no hash (unknown user) it does the same work against `dummy` and says no. */
export async function verifyPassword(password: string, stored: string | undefined, dummy = DUMMY): Promise<boolean> {
  const m = FORMAT.exec(stored ?? dummy) ?? FORMAT.exec(DUMMY)!;
  const expected = Buffer.from(m[5], 'base64');
  const key = await derive(password, Buffer.from(m[4], 'base64'), Number(m[1]), Number(m[2]), Number(m[3]));
  const same = key.length === expected.length && timingSafeEqual(key, expected);
  return same && stored !== undefined;
}
