// The routing table of handle-incoming-mail: which local address goes to
// which command. Exact routes, aliases (expanded, loops refused), a default
// command per domain (virtual mailboxes in a few lines), an optional list of
// the users it serves, and a catch-all.
import { type Address, AddressError, addressKey, asciiDomain, mailboxOf, parseMailbox } from './address.js';

export interface DomainRules {
  command: string[];
  users?: string[];
  catch_all?: string;
}

export interface RoutingTable {
  domains: Record<string, DomainRules>;
  routes: Record<string, string[]>;
  aliases: Record<string, string[]>;
}

export interface Target {
  address: Address;
  argv: string[];
}

export type Resolution = { kind: 'deliver'; targets: Target[] } | { kind: 'norecipient' } | { kind: 'fail'; reason: string };

const MAX_ALIAS_DEPTH = 8;

/** Put the address into a route's argv: where {address}, {local} or {domain} appear, else appended. */
export function routeArgv(template: readonly string[], a: Address): string[] {
  const placeholder = /\{(address|local|domain)\}/g;
  const fill = (s: string) => s.replace(placeholder, (_, k: string) => (k === 'local' ? a.local : k === 'domain' ? a.asciiDomain : mailboxOf(a)));
  return template.some((s) => /\{(address|local|domain)\}/.test(s)) ? template.map(fill) : [...template, mailboxOf(a)];
}

/**
 * A local part as the table compares it: ASCII letters in either case, the
 * rest as written. Senders write BOB@b.test for bob@b.test and Postfix takes
 * them as one; compared as written, BOB fell through to the catch_all (someone
 * else's mailbox) or got a mailbox of his own.
 */
const foldLocal = (local: string) => local.replace(/[A-Z]+/g, (s) => s.toLowerCase());

/** The key an address is looked up by in routes, aliases and users: the local part folded, the domain in ASCII. */
const routeKey = (a: Address) => `${foldLocal(a.local)}@${a.asciiDomain}`;

interface Domain {
  command: string[];
  /** The users served, by folded local part, each with its spelling in the table; undefined: every user. */
  users?: Map<string, string>;
  catchAll?: string;
}

export class Router {
  private readonly domains = new Map<string, Domain>();
  /** By routeKey: the address as the table spells it, and its command. */
  private readonly routes = new Map<string, { address: Address; argv: string[] }>();
  private readonly aliases = new Map<string, Address[]>();

  /** Builds the table; throws an Error naming the bad key (the caller makes it a config error). */
  constructor(table: RoutingTable) {
    for (const [d, rules] of Object.entries(table.domains)) {
      const ascii = asciiDomain(d);
      // "b.test" and "B.Test" are one domain: which rules hold would be a guess.
      if (this.domains.has(ascii)) throw new Error(`domains."${d}": names a domain another key names already (${ascii})`);
      this.domains.set(ascii, { command: rules.command, catchAll: rules.catch_all, users: rules.users && usersOf(rules.users, ascii, `domains."${d}".users`) });
    }
    const routeKeys = new Map<string, string>();
    for (const [addr, argv] of Object.entries(table.routes)) {
      const address = this.localAddress(addr, `routes."${addr}"`);
      this.routes.set(uniqueKey(address, `routes."${addr}"`, routeKeys), { address, argv });
    }
    const aliasKeys = new Map<string, string>();
    for (const [addr, targets] of Object.entries(table.aliases)) {
      this.aliases.set(
        uniqueKey(this.localAddress(addr, `aliases."${addr}"`), `aliases."${addr}"`, aliasKeys),
        targets.map((t) => this.localAddress(t, `aliases."${addr}"`)),
      );
    }
    for (const [d, rules] of this.domains) if (rules.catchAll) this.localAddress(rules.catchAll, `domains."${d}".catch_all`);
    for (const k of this.aliases.keys()) this.expand(parseMailbox(k), 0, new Set()); // refuse loops now, not at delivery
  }

  private localAddress(text: string, where: string): Address {
    let a: Address;
    try {
      a = parseMailbox(text);
    } catch (e) {
      throw new Error(`${where}: ${(e as AddressError).message}`);
    }
    if (!this.domains.has(a.asciiDomain)) throw new Error(`${where}: ${text} is not in a local domain (add it under [domains])`);
    return a;
  }

  isLocal(a: Address): boolean {
    return this.domains.has(a.asciiDomain);
  }

  private expand(a: Address, depth: number, seen: Set<string>): Address[] {
    const key = routeKey(a);
    const targets = this.aliases.get(key);
    if (!targets) return [a];
    if (seen.has(key) || depth > MAX_ALIAS_DEPTH) throw new Error(`aliases: loop or nesting deeper than ${MAX_ALIAS_DEPTH} at ${mailboxOf(a)}`);
    const next = new Set(seen).add(key);
    return targets.flatMap((t) => this.expand(t, depth + 1, next));
  }

  /** Route one local address. */
  resolve(a: Address): Resolution {
    let expanded: Address[];
    try {
      expanded = this.expand(a, 0, new Set());
    } catch (e) {
      return { kind: 'fail', reason: (e as Error).message };
    }
    const targets: Target[] = [];
    const seen = new Set<string>();
    // An alias member without a route is skipped; the others still get the mail.
    for (const t of expanded.flatMap((m) => this.targetsFor(m))) {
      const key = addressKey(t.address);
      if (seen.has(key)) continue;
      seen.add(key);
      targets.push(t);
    }
    return targets.length ? { kind: 'deliver', targets } : { kind: 'norecipient' };
  }

  /** Where one (expanded) address goes: its route, its domain's command, or every member the catch_all expands to; none when nothing serves it. */
  private targetsFor(a: Address, viaCatchAll = false): Target[] {
    // The table's spelling of a route or a user is what the command gets: bob's mail goes to mail/bob, however it was addressed.
    const route = this.routes.get(routeKey(a));
    if (route) return [{ address: route.address, argv: routeArgv(route.argv, route.address) }];
    const rules = this.domains.get(a.asciiDomain);
    if (!rules) return [];
    const user = rules.users ? rules.users.get(foldLocal(a.local)) : a.local;
    if (rules.command.length && user !== undefined) return [{ address: { ...a, local: user }, argv: routeArgv(rules.command, { ...a, local: user }) }];
    if (!rules.catchAll || viaCatchAll) return [];
    // A catch_all naming an alias gets what the alias gets: every member (loops were refused when the table was built).
    return this.expand(parseMailbox(rules.catchAll), 0, new Set()).flatMap((m) => this.targetsFor(m, true));
  }
}

/** An address's key, refused when another key of the same table names the same address in other letters (which one holds would be a guess). */
function uniqueKey(a: Address, where: string, written: Map<string, string>): string {
  const key = routeKey(a);
  const other = written.get(key);
  if (other !== undefined) throw new Error(`${where}: names the address ${other} names already (${key})`);
  written.set(key, where);
  return key;
}

/**
 * A domain's users by folded local part, each checked and in NFC as the
 * address parser makes recipients' local parts: "josé" typed in NFD (as some
 * editors and macOS file names give it) never matched. Two entries naming one
 * user are refused (which spelling is the mailbox would be a guess).
 */
function usersOf(users: readonly string[], domain: string, where: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const written of users) {
    let u: string;
    try {
      u = parseMailbox(`${written}@${domain}`).local;
    } catch (e) {
      if (!(e instanceof AddressError)) throw e;
      throw new Error(`${where}: "${written}" is not a local part (${e.message})`);
    }
    const other = out.get(foldLocal(u));
    if (other !== undefined) throw new Error(`${where}: "${written}" names the user "${other}" names already`);
    out.set(foldLocal(u), u);
  }
  return out;
}
