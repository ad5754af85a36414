// smtp-send: deliver an IMA message to legacy recipients over SMTP. The
// message becomes MIME once (ima-mime(7), spooled, never whole in memory),
// is DKIM-signed for the sender's domain when the config has keys, and goes
// to each recipient domain's MX hosts in preference order (or to the
// smarthost); one result line per recipient, the exit code of DESIGN.md 2.
//
// It does not queue or retry (run-queue does; exit 75 and TEMPFAIL lines say
// when to), does not speak IMDP (send-mail does), and never sends a bcc
// header: each recipient's copy names only the to and cc recipients.
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { PassThrough, Readable } from 'node:stream';
import type { Argv } from 'yargs';
import { type Address, AddressError, addressKey, asciiDomain, domainProblem, mailboxOf, parseAddressList, parseMailbox } from '../address.js';
import { openInput, start } from '../cli.js';
import { type Located, configPath, duration, integer, list, map, optional, size, string, table } from '../config.js';
import { EXIT, Failure, configError, dataError, usageError } from '../failure.js';
import type { Io } from '../io.js';
import { DEFAULT_LIMITS, type Headers, MessageError } from '../message/index.js';
import { spoolIma, writeMime } from '../mime/to-mime.js';
import { Dns, dnsServerProblem } from '../net/dns.js';
import { type Word, exitFor, formatResult } from '../results.js';
import { type DkimKey, dkimRecord, dkimSignatures, keysFor, loadDkimKeys } from '../smtp/dkim.js';
import { type Message, type Outcome, type Peer, type SendOptions, type TlsMode, asStream, deliver } from '../smtp/send.js';
import { Spool, SpoolLimitError, SpoolStore } from '../spool.js';

const schema = table({
  helo: optional(string({ check: (s) => (s === '' ? undefined : domainProblem(s)) }), ''),
  dns_servers: optional(list(string({ check: dnsServerProblem })), [] as string[]),
  mx_port: optional(integer({ min: 1, max: 65535 }), 25),
  tls: optional(string({ oneOf: ['may', 'verify'] }), 'may'),
  tls_ca: optional(list(string({ nonEmpty: true })), [] as string[]),
  domains: map(table({ tls: optional(string({ oneOf: ['may', 'verify'] }), '') }), domainProblem),
  smarthost: table({
    host: optional(string(), ''),
    tls: optional(string({ oneOf: ['starttls', 'implicit', 'may'] }), 'starttls'),
    user: optional(string(), ''),
    password_file: optional(string(), ''),
  }),
  dkim: optional(list(table({ domain: string({ check: domainProblem }), selector: string({ check: selectorProblem }), key: string({ nonEmpty: true }) })), []),
  max_message_bytes: optional(size({ min: 1024 }), 100 * 1024 * 1024),
  spool_dir: optional(string(), ''),
  timeouts: table({
    connect: optional(duration(), 30_000),
    command: optional(duration(), 300_000),
  }),
});
type Config = ReturnType<typeof schema.parse>;

function selectorProblem(s: string): string | undefined {
  return /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/i.test(s)
    ? undefined
    : `not a DKIM selector (DNS labels): ${JSON.stringify(s)}`;
}

const options = (y: Argv) =>
  y
    .option('from', { alias: 'f', type: 'string', describe: "Envelope sender (MAIL FROM); default: the message's from", requiresArg: true })
    .option('file', { type: 'string', describe: 'Read the message from FILE instead of stdin', requiresArg: true })
    .option('dkim-record', { type: 'string', describe: "Print the DNS TXT records to publish for DOMAIN's DKIM keys, and exit", requiresArg: true });

/** What the config names, read and checked at start (and by --check-config): DKIM keys, CAs, the smarthost and its password. */
interface Checked {
  keys: DkimKey[];
  ca?: Buffer[];
  smarthost?: Peer;
  spoolDir?: string;
}

function check(config: Config, source: Located): Checked {
  const configFile = source.file ?? 'smtp-send.toml';
  return {
    keys: loadDkimKeys(config.dkim, source, configFile),
    ca: config.tls_ca.length ? loadCas(config, source) : undefined,
    smarthost: config.smarthost.host ? smarthostPeer(config, source, configFile) : undefined,
    spoolDir: config.spool_dir ? configPath(source, config.spool_dir) : undefined,
  };
}

export async function main(args: string[], io: Io): Promise<number> {
  const usage = '$0 [options] RECIPIENT... < message\n$0 --dkim-record DOMAIN';
  const s = await start({ name: 'smtp-send', role: 'server', usage, schema, options, check }, args, io);
  if (typeof s === 'number') return s;
  const { argv, config, log } = s;
  const { keys, ca, smarthost, spoolDir } = s.prepared;
  if (argv.dkimRecord !== undefined) return printRecords(keys, String(argv.dkimRecord), io);
  const recipients = argv._.map((a) => parseArg(String(a), 'recipient'));
  if (recipients.length === 0) throw usageError('give at least one RECIPIENT');
  const from = argv.from === undefined ? undefined : argv.from === '' ? null : parseArg(argv.from, '--from');
  const sendOpts: SendOptions = {
    helo: config.helo || hostname(),
    ca,
    timeouts: config.timeouts,
    dns: new Dns(config.dns_servers),
    log,
  };
  const store = new SpoolStore({ dir: spoolDir });
  let mime: Spool | undefined;
  try {
    const prepared = await prepare(await openInput(argv.file, io), store, config.max_message_bytes, spoolDir);
    mime = prepared.spool;
    const sender = from === undefined ? senderOf(prepared.headers) : from;
    const author = authorDomain(prepared.headers) ?? sender?.asciiDomain;
    const signatures = Buffer.from(await dkimSignatures(author ? keysFor(keys, author) : [], asStream(mime.open())));
    const spool = mime;
    const message: Message = { size: signatures.length + spool.size, open: () => joined(signatures, spool) };
    const envFrom = sender ? `${sender.local}@${sender.asciiDomain}` : '';
    const outcomes = new Map<string, Outcome>();
    await Promise.all(
      groupByDomain(recipients).map(async ([domain, group]) => {
        const results = await sendDomain(domain, group, envFrom, message, { config, smarthost, sendOpts });
        group.forEach((a, i) => outcomes.set(addressKey(a), results[i]));
      }),
    );
    return report(recipients, outcomes, io);
  } finally {
    await mime?.dispose();
    await store.dispose();
  }
}

function parseArg(text: string, what: string): Address {
  try {
    return parseMailbox(text);
  } catch (e) {
    if (e instanceof AddressError) throw usageError(`${what}: ${e.message}`);
    throw e;
  }
}

function printRecords(keys: DkimKey[], domain: string, io: Io): number {
  const ascii = (() => {
    try {
      return asciiDomain(domain);
    } catch (e) {
      throw usageError(`--dkim-record: ${(e as Error).message}`);
    }
  })();
  const mine = keysFor(keys, ascii);
  if (mine.length === 0) throw usageError(`--dkim-record: no [[dkim]] key for ${ascii} in the config`);
  for (const k of mine) io.stdout.write(`${dkimRecord(k)}\n`);
  return EXIT.OK;
}

function loadCas(config: Config, source: Located): Buffer[] {
  const paths = config.tls_ca.map((f) => configPath(source, f));
  return paths.map((p, i) => {
    try {
      return readFileSync(p);
    } catch (e) {
      throw configError(source.file ?? 'smtp-send.toml', `tls_ca[${i}]`, `${p}: cannot read (${(e as NodeJS.ErrnoException).code})`);
    }
  });
}

function smarthostPeer(config: Config, source: Located, configFile: string): Peer {
  const h = config.smarthost;
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+))(?::(\d{1,5}))?$/.exec(h.host);
  if (!m || Number(m[3] ?? 1) > 65535) throw configError(configFile, 'smarthost.host', `expected HOST or HOST:PORT, not ${JSON.stringify(h.host)}`);
  const tls: TlsMode = h.tls === 'implicit' ? 'implicit' : h.tls === 'starttls' ? 'verify' : 'may';
  const port = m[3] ? Number(m[3]) : tls === 'implicit' ? 465 : 587;
  let auth: Peer['auth'];
  if (h.user) {
    if (tls === 'may') throw configError(configFile, 'smarthost.tls', 'AUTH sends a password: use "starttls" or "implicit", not "may"');
    if (!h.password_file) throw configError(configFile, 'smarthost.password_file', 'is required with smarthost.user');
    const file = configPath(source, h.password_file);
    try {
      auth = { user: h.user, pass: readFileSync(file, 'utf8').split('\n')[0] };
    } catch (e) {
      throw configError(configFile, 'smarthost.password_file', `${file}: cannot read (${(e as NodeJS.ErrnoException).code})`);
    }
  }
  return { host: m[1] ?? m[2], port, tls, auth };
}

/** The IMA message, checked as every reader does, then its MIME form (CRLF, no bcc) spooled once. */
async function prepare(input: Readable, store: SpoolStore, maxBytes: number, spoolDir: string | undefined): Promise<{ headers: Headers; spool: Spool }> {
  const limits = { ...DEFAULT_LIMITS, maxTotalBytes: maxBytes };
  let parts;
  try {
    parts = await spoolIma(input, store, limits);
  } catch (e) {
    if (e instanceof MessageError) throw dataError(`message: ${e.message}`);
    throw e;
  }
  if (!parts.headers) throw dataError('message: no headers entry');
  const pipe = new PassThrough();
  try {
    const [spool] = await Promise.all([Spool.from(pipe, { limit: maxBytes * 2, dir: spoolDir }), writeMime(parts, pipe, { newline: 'crlf', keepBcc: false })]);
    return { headers: parts.headers, spool };
  } catch (e) {
    pipe.destroy();
    if (e instanceof SpoolLimitError) throw dataError(`message: its MIME form is larger than ${maxBytes * 2} bytes`);
    throw e;
  }
}

function firstAddress(headers: Headers, field: string): Address | undefined {
  const value = headers.get(field);
  if (!value) return undefined;
  try {
    return parseAddressList(value)[0];
  } catch (e) {
    if (e instanceof AddressError) throw dataError(`${field}: ${e.message}`);
    throw e;
  }
}

/** The envelope sender: the message's from. */
function senderOf(headers: Headers): Address {
  const from = firstAddress(headers, 'from');
  if (!from) throw dataError('the message has no from: give --from ADDRESS (or --from "" for the null sender)');
  return from;
}

/** The domain DKIM signs for: the author's (From header), which DMARC aligns with. */
function authorDomain(headers: Headers): string | undefined {
  return firstAddress(headers, 'from')?.asciiDomain;
}

function joined(head: Buffer, spool: Spool): Readable {
  return Readable.from(
    (async function* () {
      if (head.length) yield head;
      const rest = spool.open();
      if (Buffer.isBuffer(rest)) yield rest;
      else yield* rest as AsyncIterable<Buffer>;
    })(),
  );
}

function groupByDomain(recipients: Address[]): [string, Address[]][] {
  const groups = new Map<string, Address[]>();
  for (const a of recipients) {
    const g = groups.get(a.asciiDomain) ?? [];
    if (!g.some((b) => addressKey(b) === addressKey(a))) g.push(a);
    groups.set(a.asciiDomain, g);
  }
  return [...groups.entries()];
}

interface Route {
  config: Config;
  smarthost?: Peer;
  sendOpts: SendOptions;
}

/** One domain: its hosts (smarthost, or MX), then the transaction; an outcome per recipient in order. */
async function sendDomain(domain: string, group: Address[], from: string, message: Message, r: Route): Promise<Outcome[]> {
  const rcpt = group.map((a) => `${a.local}@${a.asciiDomain}`);
  let peers: Peer[];
  if (r.smarthost) peers = [r.smarthost];
  else {
    try {
      const tls = (r.config.domains[domain]?.tls || r.config.tls) as TlsMode;
      const { hosts } = await r.sendOpts.dns.mx(domain);
      peers = hosts.map((host) => ({ host, port: r.config.mx_port, tls }));
    } catch (e) {
      if (!(e instanceof Failure)) throw e;
      const outcome: Outcome = { word: e.temporary ? 'TEMPFAIL' : 'FAIL', reason: `${e.status} ${e.message}` };
      return group.map(() => outcome);
    }
  }
  const results = await deliver(peers, { from, to: rcpt }, message, r.sendOpts);
  return rcpt.map((x) => results.get(x) ?? { word: 'TEMPFAIL', reason: '4.0.0 no answer for this recipient' });
}

function report(recipients: Address[], outcomes: Map<string, Outcome>, io: Io): number {
  const words: Word[] = [];
  const seen = new Set<string>();
  for (const a of recipients) {
    const key = addressKey(a);
    if (seen.has(key)) continue;
    seen.add(key);
    const o = outcomes.get(key)!;
    io.stdout.write(`${formatResult({ word: o.word, address: mailboxOf(a), reason: o.reason })}\n`);
    words.push(o.word);
  }
  return exitFor(words);
}
