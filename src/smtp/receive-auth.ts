// Submission logins and sender rules. Passwords are scrypt hashes compared
// in constant time (password.ts, as post-office); failed logins are counted
// per address and per user by net/login-guard.ts, as post-office does. Sender rules say
// which addresses a user may put in MAIL FROM and From:.
import { type Address, AddressError, addressKey, asciiDomain, parseMailbox } from '../address.js';
import { verifyPassword } from '../password.js';

export interface User {
  /** scrypt$... as printed by post-office --hash-password. */
  password: string;
  /** Addresses ("alice@b.test"), domains ("@b.test") or patterns with * ("alice+*@b.test"). */
  senders: readonly string[];
}

/** Check a login; unknown users cost the same scrypt work as known ones (against `dummy`, password.ts dummyHash). */
export async function checkLogin(users: ReadonlyMap<string, User>, username: string, password: string, dummy: string): Promise<boolean> {
  return verifyPassword(password, users.get(username)?.password, dummy);
}

function globToRegExp(glob: string): RegExp {
  const body = glob
    .split('*')
    .map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
    .join('[^@]*');
  return new RegExp(`^${body}$`);
}

/** A problem with one sender rule, for config validation. */
export function senderRuleProblem(rule: string): string | undefined {
  try {
    if (rule.startsWith('@')) asciiDomain(rule.slice(1));
    else if (!rule.includes('*')) parseMailbox(rule);
    else if (!/^[^@\s]+@[^@\s]+$/.test(rule)) return `"${rule}": a pattern is local@domain with * for any characters`;
  } catch (e) {
    if (e instanceof AddressError) return `"${rule}": ${e.message}`;
    throw e;
  }
  return undefined;
}

/** May this user send as this address? */
export function senderAllowed(rules: readonly string[], address: Address): boolean {
  const key = addressKey(address);
  return rules.some((rule) => {
    if (rule.startsWith('@')) return asciiDomain(rule.slice(1)) === address.asciiDomain;
    if (rule.includes('*')) return globToRegExp(rule).test(key);
    return addressKey(parseMailbox(rule)) === key;
  });
}
