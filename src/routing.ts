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

export class Router {
  private readonly domains = new Map<string, DomainRules>();
  private readonly routes = new Map<string, string[]>();
  private readonly aliases = new Map<string, Address[]>();

  /** Builds the table; throws an Error naming the bad key (the caller makes it a config error). */
  constructor(table: RoutingTable) {
    for (const [d, rules] of Object.entries(table.domains)) {
      const ascii = asciiDomain(d);
      // "b.test" and "B.Test" are one domain: which rules hold would be a guess.
      if (this.domains.has(ascii)) throw new Error(`domains."${d}": names a domain another key names already (${ascii})`);
      this.domains.set(ascii, rules);
    }
    for (const [addr, argv] of Object.entries(table.routes)) this.routes.set(this.localKey(addr, 'routes'), argv);
    for (const [addr, targets] of Object.entries(table.aliases)) {
      this.aliases.set(
        this.localKey(addr, 'aliases'),
        targets.map((t) => this.localAddress(t, `aliases."${addr}"`)),
      );
    }
    for (const [d, rules] of this.domains) if (rules.catch_all) this.localAddress(rules.catch_all, `domains."${d}".catch_all`);
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

  private localKey(text: string, where: string): string {
    return addressKey(this.localAddress(text, `${where}."${text}"`));
  }

  isLocal(a: Address): boolean {
    return this.domains.has(a.asciiDomain);
  }

  private expand(a: Address, depth: number, seen: Set<string>): Address[] {
    const key = addressKey(a);
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
    const route = this.routes.get(addressKey(a));
    if (route) return [{ address: a, argv: routeArgv(route, a) }];
    const rules = this.domains.get(a.asciiDomain);
    if (!rules) return [];
    if (rules.command.length && (!rules.users || rules.users.includes(a.local))) return [{ address: a, argv: routeArgv(rules.command, a) }];
    if (!rules.catch_all || viaCatchAll) return [];
    // A catch_all naming an alias gets what the alias gets: every member (loops were refused when the table was built).
    return this.expand(parseMailbox(rules.catch_all), 0, new Set()).flatMap((m) => this.targetsFor(m, true));
  }
}
