// The sending side's domain logic (send-mail): complete the headers, spool
// the message once, group recipients by domain, build each domain's copy
// (its own bcc recipients only) as "its headers entry + the shared rest",
// find each domain's server.
import { randomUUID } from 'node:crypto';
import { promises as dns } from 'node:dns';
import { type Dns, type ImdpService, orderSrv } from '../net/dns.js';
import { serverAddress } from '../net/host.js';
import { PassThrough, type Readable } from 'node:stream';
import { type Address, AddressError, addressKey, asciiDomain, formatAddressList, mailboxOf, parseAddressList } from '../address.js';
import { asFailure, dataError } from '../failure.js';
import { IMDP_PORT } from './wire.js';
import { type Headers, type MessageLimits, type OutEntry, entryBytes, mtimeOf, readMessage, withoutBlindCopies, writeEntries } from '../message/index.js';
import { formatResult, parseResult } from '../results.js';
import { type BufferPool, Spool, SpoolLimitError } from '../spool.js';
import { chunksOf } from '../streams.js';

export interface Prepared {
  headers: Headers;
  mtime: Date;
  /** The whole canonical message with every recipient, spooled once. */
  spool: Spool;
  /** Where the entries after `headers` start in the spool. */
  restOffset: number;
}

const now = () => new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');

/** Read a message, set mailer/date/message-id when missing, spool it once in canonical form. */
export async function prepare(input: Readable, mailer: string, limits: MessageLimits): Promise<Prepared> {
  const entries = readMessage(input, limits);
  const first = await entries.next();
  if (first.done || first.value.kind !== 'headers') throw dataError('message has no headers entry');
  const headers = first.value.headers.clone();
  const given = headers.get('mailer');
  if (given && asciiDomainOr(given) !== mailer) throw dataError(`mailer: the message says ${given}, but this send-mail sends as ${mailer}`);
  if (!given) headers.set('mailer', mailer);
  if (!headers.has('date')) headers.set('date', now());
  if (!headers.has('message-id')) headers.set('message-id', `urn:uuid:${randomUUID()}`);
  const mtime = mtimeOf(headers);
  async function* all(): AsyncGenerator<OutEntry> {
    const raw = headers.serialize();
    yield { path: 'headers', size: raw.length, open: () => raw };
    for await (const e of entries) if (e.kind !== 'headers') yield { path: e.path, size: e.size, open: () => e.stream };
  }
  const pipe = new PassThrough();
  const writing = writeEntries(pipe, all(), mtime);
  let spool: Spool;
  try {
    [spool] = await Promise.all([Spool.from(pipe, { limit: limits.maxTotalBytes + 1024 * 1024 }), writing]);
  } catch (e) {
    pipe.destroy();
    if (e instanceof SpoolLimitError) throw dataError(`message larger than ${limits.maxTotalBytes} bytes`);
    throw e;
  }
  const restOffset = headersEntry(headers, mtime).length;
  return { headers, mtime, spool, restOffset };
}

function asciiDomainOr(d: string): string {
  try {
    return asciiDomain(d.trim());
  } catch {
    return d;
  }
}

/** The tar bytes of a headers entry alone (header block, data, padding): a message's first bytes. */
export function headersEntry(headers: Headers, mtime: Date): Buffer {
  return entryBytes('headers', headers.serialize(), mtime);
}

export interface Group {
  /** ASCII domain. */
  domain: string;
  recipients: Address[];
  /** The bcc recipients that live in this domain: the only ones its copy names. */
  bcc: Address[];
}

/**
 * Recipients of to, cc and bcc grouped by ASCII domain, each address once.
 * With an envelope (run-queue's recipients still to do), those addresses
 * instead, grouped the same way; bcc lists stay as the headers say.
 */
export function groupRecipients(headers: Headers, envelope?: readonly Address[]): Group[] {
  const groups = headerGroups(headers);
  if (!envelope) return groups;
  const byDomain = new Map(groups.map((g) => [g.domain, g]));
  const out = new Map<string, Group>();
  const seen = new Set<string>();
  for (const a of envelope) {
    if (seen.has(addressKey(a))) continue;
    seen.add(addressKey(a));
    const g = out.get(a.asciiDomain) ?? { domain: a.asciiDomain, recipients: [], bcc: byDomain.get(a.asciiDomain)?.bcc ?? [] };
    out.set(a.asciiDomain, g);
    g.recipients.push(a);
  }
  return [...out.values()];
}

function headerGroups(headers: Headers): Group[] {
  const groups = new Map<string, Group>();
  const seen = new Set<string>();
  for (const field of ['to', 'cc', 'bcc']) {
    for (const value of headers.getAll(field)) {
      let list: Address[];
      try {
        list = parseAddressList(value);
      } catch (e) {
        if (e instanceof AddressError) throw dataError(`${field}: ${e.message}`);
        throw e;
      }
      for (const a of list) {
        const g = groups.get(a.asciiDomain) ?? { domain: a.asciiDomain, recipients: [], bcc: [] };
        groups.set(a.asciiDomain, g);
        if (field === 'bcc' && !g.bcc.some((b) => addressKey(b) === addressKey(a))) g.bcc.push(a);
        if (seen.has(addressKey(a))) continue;
        seen.add(addressKey(a));
        g.recipients.push(a);
      }
    }
  }
  return [...groups.values()];
}

/** The headers one domain receives: bcc lists only that domain's own bcc recipients. */
export function headersFor(base: Headers, g: Group): Headers {
  const h = withoutBlindCopies(base).clone().remove('bcc');
  if (g.bcc.length) h.set('bcc', formatAddressList(g.bcc));
  return h;
}

/** One domain's copy: its own headers entry followed by the shared rest of the spool (its chunks lent from `pool` when given). */
export async function copyFor(p: Prepared, g: Group, pool?: BufferPool): Promise<{ headersRaw: Buffer; size: number; open: () => AsyncIterable<Buffer> }> {
  const h = headersFor(p.headers, g);
  const first = headersEntry(h, p.mtime);
  const restSize = p.spool.size - p.restOffset;
  return {
    headersRaw: h.serialize(),
    size: first.length + restSize,
    open: async function* () {
      yield first;
      const rest = p.spool.open(p.restOffset, pool);
      if (Buffer.isBuffer(rest)) yield rest;
      else yield* chunksOf(rest);
    },
  };
}

export interface Target {
  host: string;
  port: number;
  /** How it was found, for messages. */
  via: 'config' | 'srv' | 'domain';
}

/** "host", "host:port", "[v6]:port"; the IMDP port when none is given. */
export function parseTarget(s: string): { host: string; port: number } {
  const where = serverAddress(s.trim());
  if (typeof where === 'string') throw new Error(where);
  return { host: where.host, port: where.port ?? IMDP_PORT };
}

/** What is wrong with a [servers] value, for the config check. */
export function targetProblem(s: string): string | undefined {
  const where = serverAddress(s.trim());
  return typeof where === 'string' ? where : undefined;
}

/**
 * The server of a domain: the config table, then DNS SRV _imdp._tcp, then the
 * domain itself on the IMDP port. Superseded by routeDomain (fall-back,
 * legacy = "auto"); kept until callers written before it move over.
 */
export async function findServer(domain: string, table: Record<string, string>, useSrv: boolean): Promise<Target> {
  const configured = table[domain];
  if (configured) return { ...parseTarget(configured), via: 'config' };
  if (useSrv) {
    try {
      const records = await dns.resolveSrv(`_imdp._tcp.${domain}`);
      const best = orderSrv(records).find((r) => r.name && r.name !== '.');
      if (best) return { host: best.name, port: best.port, via: 'srv' };
    } catch {
      // No SRV record (or no DNS): fall back to the domain itself.
    }
  }
  return { host: domain, port: IMDP_PORT, via: 'domain' };
}

/** Which way one domain goes: IMDP to these targets (in order), the legacy command, or nowhere (and why). */
export type Route = { way: 'imdp'; targets: Target[] } | { way: 'legacy'; why: string } | { way: 'refused'; temporary: boolean; reason: string };

export interface RouteConfig {
  /** [servers]: domain -> "host[:port]". */
  servers: Record<string, string>;
  /** ASCII domains configured as legacy. */
  legacyDomains: ReadonlySet<string>;
  dnsSrv: boolean;
  /** "auto": a domain without IMDP in DNS goes to SMTP; "never": to the domain itself on port 4690. */
  legacy: 'auto' | 'never';
  dns: Dns;
}

/**
 * DESIGN.md 8: the config table first, then DNS SRV _imdp._tcp.DOMAIN (its
 * targets in RFC 2782 order; a lone "." target says the domain has no IMDP),
 * else SMTP when legacy = "auto". DNS trouble refuses the domain for now:
 * guessing SMTP for an IMA domain whose DNS is down would send it the wrong way.
 */
export async function routeDomain(domain: string, c: RouteConfig): Promise<Route> {
  if (c.legacyDomains.has(domain)) return { way: 'legacy', why: 'legacy_domains' };
  const configured = c.servers[domain];
  if (configured) return { way: 'imdp', targets: [{ ...parseTarget(configured), via: 'config' }] };
  let srv: ImdpService = { kind: 'absent' };
  if (c.dnsSrv) {
    try {
      srv = await c.dns.imdp(domain);
    } catch (e) {
      return { way: 'refused', temporary: true, reason: asFailure(e).message };
    }
  }
  if (srv.kind === 'targets') return { way: 'imdp', targets: srv.targets.map((t) => ({ ...t, via: 'srv' as const })) };
  if (c.legacy === 'auto') return { way: 'legacy', why: srv.kind === 'none' ? 'its SRV record says no IMDP' : 'no IMDP SRV record' };
  if (srv.kind === 'none') {
    return { way: 'refused', temporary: false, reason: `${domain}: its _imdp._tcp SRV record says it has no IMDP server, and legacy = "never" here` };
  }
  return { way: 'imdp', targets: [{ host: domain, port: IMDP_PORT, via: 'domain' }] };
}

/** Result lines a server relayed (REPLY) that name one of our recipients: "WORD address ...". */
export function relayedResult(replies: string[], a: Address): string | undefined {
  const key = addressKey(a);
  for (const line of replies) {
    const r = parseResult(line);
    if (!r) continue;
    try {
      const [to] = parseAddressList(r.address);
      if (addressKey(to) === key) return formatResult({ ...r, address: mailboxOf(a) });
    } catch {
      // Not an address: not a result line for us.
    }
  }
  return undefined;
}
