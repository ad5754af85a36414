// smtp-send: deliver an IMA message to legacy recipients over SMTP. The
// message becomes MIME once (ima-mime(7), spooled, never whole in memory),
// is DKIM-signed for the sender's domain when the config has keys, and goes
// to each recipient domain's MX hosts in preference order (or to the
// smarthost); one result line per recipient, the exit code of DESIGN.md 2.
//
// It does not queue or retry (run-queue does; exit 75 and TEMPFAIL lines say
// when to), does not speak IMDP (send-mail does), and never sends a bcc
// header: each recipient's copy names only the to and cc recipients.
import { X509Certificate } from 'node:crypto';
import { accessSync, constants, readFileSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import type { Argv } from 'yargs';
import { type Address, AddressError, addressKey, asciiDomain, domainProblem, mailboxOf, parseMailbox } from '../address.js';
import { openInput, start } from '../cli.js';
import { type Located, configPath, domainMap, duration, integer, list, optional, size, string, table } from '../config.js';
import { EXIT, Failure, configError, usageError } from '../failure.js';
import type { Io } from '../io.js';
import { Dns, dnsServerProblem } from '../net/dns.js';
import { serverAddress } from '../net/host.js';
import { type Word, exitFor, formatResult } from '../results.js';
import { type DkimKey, dkimRecord, keysFor, loadDkimKeys } from '../smtp/dkim.js';
import { type Outgoing, outgoing, senderOf } from '../smtp/outgoing.js';
import { type Outcome, type Peer, type Route, type SendOptions, type TlsMode, deliverDomain } from '../smtp/send.js';
import { SpoolStore } from '../spool.js';

const schema = table({
  helo: optional(string({ check: (s) => (s === '' ? undefined : domainProblem(s)) }), ''),
  dns_servers: optional(list(string({ check: dnsServerProblem })), [] as string[]),
  mx_port: optional(integer({ min: 1, max: 65535 }), 25),
  tls: optional(string({ oneOf: ['may', 'verify'] }), 'may'),
  tls_ca: optional(list(string({ nonEmpty: true })), [] as string[]),
  domains: domainMap(table({ tls: optional(string({ oneOf: ['may', 'verify'] }), '') }), (d) => asciiDomain(d)),
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
  /** [domains] TLS policies by ASCII lowercase domain, as recipients' domains are looked up. */
  domainTls: Map<string, TlsMode>;
  ca?: Buffer[];
  smarthost?: Peer;
  spoolDir?: string;
}

function check(config: Config, source: Located): Checked {
  const configFile = source.file ?? 'smtp-send.toml';
  return {
    keys: loadDkimKeys(config.dkim, source, configFile),
    domainTls: domainPolicies(config),
    ca: config.tls_ca.length ? loadCas(config, source) : undefined,
    smarthost: config.smarthost.host ? smarthostPeer(config, source, configFile) : undefined,
    spoolDir: spoolDirOf(config, source, configFile),
  };
}

/** The [domains] TLS policies, by ASCII lowercase domain as recipients are grouped (domainMap keyed them so). */
function domainPolicies(config: Config): Map<string, TlsMode> {
  return new Map(Object.entries(config.domains).flatMap(([domain, rules]) => (rules.tls ? [[domain, rules.tls as TlsMode]] : [])));
}

export async function main(args: string[], io: Io): Promise<number> {
  const usage = '$0 [options] RECIPIENT... < message\n$0 --dkim-record DOMAIN';
  const s = await start({ name: 'smtp-send', role: 'server', usage, schema, options, check }, args, io);
  if (typeof s === 'number') return s;
  const { argv, config, log } = s;
  const { keys, domainTls, ca, smarthost, spoolDir } = s.prepared;
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
    signal: io.signal,
  };
  const store = new SpoolStore({ dir: spoolDir });
  let out: Outgoing | undefined;
  try {
    out = await outgoing(await openInput(argv.file, io), { store, maxBytes: config.max_message_bytes, spoolDir, keys });
    const sender = from === undefined ? senderOf(out.headers) : from;
    const envelopeFrom = sender ? `${sender.local}@${sender.asciiDomain}` : '';
    const route = (domain: string): Route => ({ smarthost, mxPort: config.mx_port, tls: domainTls.get(domain) ?? (config.tls as TlsMode) });
    const outcomes = new Map<string, Outcome>();
    const message = out.message;
    await Promise.all(
      groupByDomain(recipients).map(async ([domain, group]) => {
        const rcpt = group.map((a) => addressKey(a));
        const results = await deliverDomain(domain, { from: envelopeFrom, to: rcpt }, message, route(domain), sendOpts);
        for (const r of rcpt) outcomes.set(r, results.get(r)!);
      }),
    );
    return report(recipients, outcomes, io);
  } finally {
    await out?.dispose();
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
  const configFile = source.file ?? 'smtp-send.toml';
  return paths.map((p, i) => {
    let pem: Buffer;
    try {
      pem = readFileSync(p);
    } catch (e) {
      throw configError(configFile, `tls_ca[${i}]`, `${p}: cannot read (${(e as NodeJS.ErrnoException).code})`);
    }
    // Read only, an unparseable file passed --check-config and made every verified send fail later, retried as TEMPFAIL.
    try {
      new X509Certificate(pem);
    } catch {
      throw configError(configFile, `tls_ca[${i}]`, `${p}: not a PEM certificate`);
    }
    return pem;
  });
}

/** spool_dir must be a directory we can write: otherwise the first large message failed as TEMPFAIL, retried for days. */
function spoolDirOf(config: Config, source: Located, configFile: string): string | undefined {
  if (!config.spool_dir) return undefined;
  const dir = configPath(source, config.spool_dir);
  try {
    if (!statSync(dir).isDirectory()) throw configError(configFile, 'spool_dir', `${dir}: not a directory`);
    accessSync(dir, constants.W_OK | constants.X_OK);
  } catch (e) {
    if (e instanceof Failure) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw configError(configFile, 'spool_dir', `${dir}: ${code === 'ENOENT' ? 'no such directory' : `cannot write (${code})`}`);
  }
  return dir;
}

function smarthostPeer(config: Config, source: Located, configFile: string): Peer {
  const h = config.smarthost;
  const where = serverAddress(h.host);
  if (typeof where === 'string') throw configError(configFile, 'smarthost.host', where);
  const tls: TlsMode = h.tls === 'implicit' ? 'implicit' : h.tls === 'starttls' ? 'verify' : 'may';
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
  return { host: where.host, port: where.port ?? (tls === 'implicit' ? 465 : 587), tls, auth };
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
