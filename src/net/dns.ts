// DNS for the sending side (send-mail, smtp-send, run-queue): one resolver
// that asks the configured `dns_servers` (or the system's), and the lookups
// mail routing needs: MX with RFC 5321 5.1's implicit MX and RFC 7505's null
// MX, SRV in RFC 2782 order (priority, then weighted random), TXT.
//
// An absent record (NXDOMAIN, NODATA) is an answer; every other DNS trouble
// (SERVFAIL, timeout, refused) is temporary: a retry is cheaper than a bounce.
import { promises as dnsp, type SrvRecord } from 'node:dns';
import { isIP } from 'node:net';
import { permFail, tempFail } from '../failure.js';

/** "IP" or "IP:PORT" or "[v6]:PORT": what a config's dns_servers may hold. */
export function dnsServerProblem(s: string): string | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([\d.]+)(?::(\d{1,5}))?|([0-9a-fA-F:]+))$/.exec(s);
  const ip = m?.[1] ?? m?.[3] ?? m?.[5];
  const port = Number(m?.[2] ?? m?.[4] ?? 53);
  if (!ip || !isIP(ip) || port < 1 || port > 65535) return `not an IP address with an optional port: ${JSON.stringify(s)}`;
  return undefined;
}

/** A target of an SRV record: where to connect. */
export interface SrvTarget {
  host: string;
  port: number;
}

/** What a domain's _imdp._tcp SRV records say. */
export type ImdpService =
  | { kind: 'targets'; targets: SrvTarget[] }
  /** A lone record with target ".": the domain says it has no IMDP (RFC 2782). */
  | { kind: 'none' }
  /** No SRV records at all. */
  | { kind: 'absent' };

const ABSENT = new Set(['ENODATA', 'ENOTFOUND']);
const codeOf = (e: unknown) => (e as NodeJS.ErrnoException)?.code ?? String(e);

export class Dns {
  private readonly resolver: dnsp.Resolver;
  /** Were servers configured? Then host names are resolved here too, not by the system's getaddrinfo. */
  readonly custom: boolean;

  constructor(
    servers: readonly string[] = [],
    private readonly timeoutMs = 5000,
  ) {
    this.resolver = new dnsp.Resolver({ timeout: timeoutMs, tries: 2 });
    if (servers.length) this.resolver.setServers([...servers]);
    this.custom = servers.length > 0;
  }

  /** The hosts mail for `domain` goes to, best first; equal preferences in random order (RFC 5321 5.1). */
  async mx(domain: string): Promise<{ hosts: string[]; implicit: boolean }> {
    let records;
    try {
      records = await this.resolver.resolveMx(domain);
    } catch (e) {
      const code = codeOf(e);
      if (code === 'ENODATA') return { hosts: [domain], implicit: true };
      if (code === 'ENOTFOUND') throw permFail(`${domain}: no such domain (DNS NXDOMAIN)`, '5.1.2');
      throw tempFail(`${domain}: MX lookup failed (${code})`, '4.4.3');
    }
    if (records.some((r) => r.exchange === '' || r.exchange === '.')) {
      throw permFail(`${domain}: the domain accepts no mail (null MX, RFC 7505)`, '5.1.10');
    }
    const shuffled = records.map((r) => ({ r, k: Math.random() }));
    shuffled.sort((a, b) => a.r.priority - b.r.priority || a.k - b.k);
    return { hosts: [...new Set(shuffled.map((x) => x.r.exchange.toLowerCase()))], implicit: false };
  }

  /** The _imdp._tcp SRV records of a domain, in the order to try them. */
  async imdp(domain: string): Promise<ImdpService> {
    let records: SrvRecord[];
    try {
      records = await this.resolver.resolveSrv(`_imdp._tcp.${domain}`);
    } catch (e) {
      const code = codeOf(e);
      if (ABSENT.has(code)) return { kind: 'absent' };
      throw tempFail(`${domain}: SRV lookup of _imdp._tcp.${domain} failed (${code})`, '4.4.3');
    }
    const real = records.filter((r) => r.name !== '' && r.name !== '.');
    if (real.length === 0) return records.length ? { kind: 'none' } : { kind: 'absent' };
    return { kind: 'targets', targets: orderSrv(real).map((r) => ({ host: r.name.toLowerCase(), port: r.port })) };
  }

  /**
   * The addresses to connect to for a host, IPv4 first; [] when the name has
   * none (an answer, not trouble: the caller decides what that means).
   * Without configured servers the system's resolver (getaddrinfo) answers,
   * so /etc/hosts counts, as for every other program on the machine.
   */
  async addresses(host: string): Promise<string[]> {
    if (isIP(host)) return [host];
    if (!this.custom) return this.systemAddresses(host);
    const [v4, v6] = await Promise.all([this.lookup(() => this.resolver.resolve4(host), host), this.lookup(() => this.resolver.resolve6(host), host)]);
    return [...v4, ...v6];
  }

  private async systemAddresses(host: string): Promise<string[]> {
    // getaddrinfo cannot be cancelled; the wait for it is bounded as the resolver's two tries are.
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(Object.assign(new Error('timed out'), { code: 'ETIMEOUT' })), 2 * this.timeoutMs);
    });
    const lookup = dnsp.lookup(host, { all: true });
    lookup.catch(() => {}); // its failure after the deadline has nobody to tell
    try {
      const found = await Promise.race([lookup, late]);
      return [...found.filter((a) => a.family === 4), ...found.filter((a) => a.family !== 4)].map((a) => a.address);
    } catch (e) {
      // getaddrinfo's EAI_NONAME and EAI_NODATA: the name has no address. EAI_AGAIN and the rest: trouble.
      const code = codeOf(e);
      if (ABSENT.has(code)) return [];
      throw tempFail(`${host}: address lookup failed (${code})`, '4.4.3');
    } finally {
      clearTimeout(timer);
    }
  }

  /** TXT records of a name, each joined from its strings; [] when there are none. */
  async txt(name: string): Promise<string[]> {
    return (await this.lookup(() => this.resolver.resolveTxt(name), name)).map((parts) => parts.join(''));
  }

  private async lookup<T>(f: () => Promise<T[]>, name: string): Promise<T[]> {
    try {
      return await f();
    } catch (e) {
      const code = codeOf(e);
      if (ABSENT.has(code)) return [];
      throw tempFail(`${name}: DNS lookup failed (${code})`, '4.4.3');
    }
  }
}

/**
 * RFC 2782's order: ascending priority; within one priority, repeatedly pick
 * a record at random with probability proportional to its weight (weight 0
 * records first in the running sum, so they are picked only when nothing
 * else is left or the draw is 0).
 */
export function orderSrv<T extends { priority: number; weight: number }>(records: readonly T[], random: () => number = Math.random): T[] {
  const priorities = [...new Set(records.map((r) => r.priority))].sort((a, b) => a - b);
  const out: T[] = [];
  for (const p of priorities) {
    const left = records.filter((r) => r.priority === p).sort((a, b) => (a.weight === 0 ? 0 : 1) - (b.weight === 0 ? 0 : 1));
    while (left.length) {
      const total = left.reduce((s, r) => s + r.weight, 0);
      const draw = random() * total;
      let sum = 0;
      let i = left.findIndex((r) => (sum += r.weight) >= draw);
      if (i === -1) i = left.length - 1;
      out.push(left.splice(i, 1)[0]);
    }
  }
  return out;
}
