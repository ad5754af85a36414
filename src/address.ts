// Mail addresses: `local@domain` or `Display Name <local@domain>`, lists
// separated by commas. UTF-8 local parts and IDN domains are allowed; domains
// are compared in their ASCII (A-label) form. An address that passes here is
// safe as a single argv element and as a path component: no `/`, no control
// characters, no leading `-` or `.`.
import { domainToASCII, domainToUnicode } from 'node:url';

export interface Address {
  /** Display name, if any (unquoted). */
  name?: string;
  /** Local part, NFC-normalised, case kept. */
  local: string;
  /** Domain as written (NFC, lowercased). */
  domain: string;
  /** Domain in ASCII (punycode) form, lowercase: use this to compare and route. */
  asciiDomain: string;
}

export class AddressError extends Error {}

const MAX_LOCAL = 64;
const MAX_ADDRESS = 254;
// RFC 5322 atext without "/" and "|" (path and pipe trouble), plus dots, plus any non-ASCII letter.
const LOCAL_CHAR = /^[A-Za-z0-9!#$%&'*+\-=?^_`{}~.\u0080-\u{10FFFF}]+$/u;
const FORBIDDEN_UNICODE = /[\p{Cc}\p{Cf}\p{Zs}\p{Zl}\p{Zp}\u{FFFD}]/u;
// The same class without the non-ASCII letters. An ASCII local part it
// accepts has nothing FORBIDDEN_UNICODE names, so the two Unicode patterns
// (whose first use costs a spawned stage about 0.2 ms to compile) are only
// run on local parts that are not ASCII.
const ASCII_LOCAL_CHAR = /^[A-Za-z0-9!#$%&'*+\-=?^_`{}~.]+$/;
const LDH_LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

function checkLocal(local: string, whole: string): string {
  const l = local.normalize('NFC');
  if (l === '') throw new AddressError(`${whole}: empty local part`);
  if (Buffer.byteLength(l) > MAX_LOCAL) throw new AddressError(`${whole}: local part longer than ${MAX_LOCAL} bytes`);
  if (!ASCII_LOCAL_CHAR.test(l) && (!LOCAL_CHAR.test(l) || FORBIDDEN_UNICODE.test(l))) throw new AddressError(`${whole}: bad character in local part`);
  if (l.startsWith('.') || l.endsWith('.') || l.includes('..')) throw new AddressError(`${whole}: misplaced dot in local part`);
  if (l.startsWith('-')) throw new AddressError(`${whole}: local part must not start with "-"`);
  return l;
}

/** The ASCII form of a domain, or an AddressError naming what is wrong. */
export function asciiDomain(domain: string, whole = domain): string {
  const d = domain.normalize('NFC').toLowerCase();
  if (d === '' || d.startsWith('[')) throw new AddressError(`${whole}: domain missing or an address literal`);
  const ascii = /^[\x00-\x7f]*$/.test(d) ? d : domainToASCII(d);
  if (!ascii) throw new AddressError(`${whole}: invalid international domain`);
  if (ascii.length > 253) throw new AddressError(`${whole}: domain longer than 253 characters`);
  const labels = ascii.split('.');
  if (labels.length < 2 || !labels.every((l) => LDH_LABEL.test(l))) throw new AddressError(`${whole}: invalid domain "${domain}"`);
  return ascii;
}

/** A parser's complaint as a config check: what is wrong with the text, or undefined. */
const problemOf =
  (parse: (text: string) => unknown) =>
  (text: string): string | undefined => {
    try {
      parse(text);
      return undefined;
    } catch (e) {
      if (e instanceof AddressError) return e.message;
      throw e;
    }
  };

/** What is wrong with a domain name, or undefined: for config checks. */
export const domainProblem = problemOf(asciiDomain);

/** What is wrong with a bare `local@domain`, or undefined: for config checks. */
export const mailboxProblem = problemOf(parseMailbox);

/** Parse a bare `local@domain`. */
export function parseMailbox(text: string): Address {
  const s = text.trim();
  const at = s.lastIndexOf('@');
  if (at <= 0) throw new AddressError(`${s || '(empty)'}: not an address (local@domain)`);
  const local = checkLocal(s.slice(0, at), s);
  const rawDomain = s.slice(at + 1);
  const ascii = asciiDomain(rawDomain, s);
  const domain = /^[\x00-\x7f]*$/.test(rawDomain) ? ascii : domainToUnicode(ascii) || rawDomain.toLowerCase();
  if (Buffer.byteLength(`${local}@${ascii}`) > MAX_ADDRESS) throw new AddressError(`${s}: address longer than ${MAX_ADDRESS} bytes`);
  return { local, domain: domain.normalize('NFC'), asciiDomain: ascii };
}

function unquote(name: string, whole: string): string {
  const n = name.trim();
  if (!n.startsWith('"')) {
    if (/["<>]/.test(n)) throw new AddressError(`${whole}: display name with quotes or angle brackets must be quoted`);
    return n;
  }
  if (!n.endsWith('"') || n.length < 2) throw new AddressError(`${whole}: unterminated quoted display name`);
  let out = '';
  const inner = n.slice(1, -1);
  for (let i = 0; i < inner.length; i++) {
    const c = inner[i];
    if (c === '\\' && i + 1 < inner.length) out += inner[++i];
    else if (c === '"' || c === '\\') throw new AddressError(`${whole}: bad quoting in display name`);
    else out += c;
  }
  return out;
}

/** Parse one address with or without a display name. */
export function parseAddress(text: string): Address {
  const s = text.trim();
  if (/[\x00-\x1f\x7f]/.test(s)) throw new AddressError(`${JSON.stringify(s)}: control character in address`);
  const lt = s.lastIndexOf('<');
  if (lt === -1) {
    if (s.includes('>')) throw new AddressError(`${s}: stray ">"`);
    return parseMailbox(s);
  }
  if (!s.endsWith('>')) throw new AddressError(`${s}: text after ">"`);
  const box = parseMailbox(s.slice(lt + 1, -1));
  const name = unquote(s.slice(0, lt), s).normalize('NFC');
  if (FORBIDDEN_UNICODE.test(name.replace(/ /g, ''))) throw new AddressError(`${s}: control character in display name`);
  return name === '' ? box : { ...box, name };
}

/** Split a comma-separated list, respecting quoted display names. */
export function splitList(text: string): string[] {
  const parts: string[] = [];
  let cur = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted && c === '\\') {
      cur += c + (text[++i] ?? '');
      continue;
    }
    if (c === '"') quoted = !quoted;
    if (c === ',' && !quoted) {
      parts.push(cur);
      cur = '';
    } else cur += c;
  }
  if (quoted) throw new AddressError(`${text}: unterminated quoted display name`);
  parts.push(cur);
  return parts.map((p) => p.trim()).filter((p) => p !== '');
}

export function parseAddressList(text: string): Address[] {
  return splitList(text).map(parseAddress);
}

/** `local@domain` as stored: the domain as written (Unicode form for IDNs). */
export function mailboxOf(a: Address): string {
  return `${a.local}@${a.domain}`;
}

/** The key two addresses are the same by: local part as is, domain in ASCII. */
export function addressKey(a: Address): string {
  return `${a.local}@${a.asciiDomain}`;
}

function quoteName(name: string): string {
  return /^[\p{L}\p{N}!#$%&'*+\-/=?^_`{|}~. ]+$/u.test(name) ? name : `"${name.replace(/(["\\])/g, '\\$1')}"`;
}

/** Canonical text of an address. */
export function formatAddress(a: Address): string {
  return a.name ? `${quoteName(a.name)} <${mailboxOf(a)}>` : mailboxOf(a);
}

export function formatAddressList(list: readonly Address[]): string {
  return list.map(formatAddress).join(', ');
}
