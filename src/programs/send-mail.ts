// send-mail: deliver a message to every recipient domain's IMDP server
// (ima(7)): headers first to all of them, data only when every one said
// ACCEPT, in parallel, from one spooled copy; one result line per recipient.
//
// Which way a domain goes: the config ([servers], legacy_domains), then DNS
// SRV _imdp._tcp (IMDP, targets in RFC 2782 order, the next on connection
// failure), else SMTP through legacy_command when legacy = "auto".
//
// It does not queue or retry (a failed run leaves the sender holding the
// message, exit 75 or 1 says which), does not speak SMTP (legacy domains go
// to the configured command), and never shows a domain another domain's bcc.
import { Readable } from 'node:stream';
import type { Argv } from 'yargs';
import { type Address, AddressError, asciiDomain, domainProblem, mailboxOf, parseAddressList } from '../address.js';
import { openInput, start } from '../cli.js';
import { type Located, boolean, command, domainMap, duration, list, optional, size, string, table } from '../config.js';
import { type Failure, asFailure, configError, tempFail, usageError } from '../failure.js';
import { ImdpClient } from '../imdp/client.js';
import { type Answer, isTemporary } from '../imdp/wire.js';
import { DEFAULT_LIMITS } from '../message/index.js';
import {
  type Group,
  type Prepared,
  type Route,
  type Target,
  copyFor,
  groupRecipients,
  prepare,
  relayedResult,
  routeDomain,
  targetProblem,
} from '../imdp/send.js';
import { Dns, dnsServerProblem } from '../net/dns.js';
import type { Io } from '../io.js';
import { type Word, exitFor, formatResult, parseResult } from '../results.js';
import { BufferPool, CHUNK as SPOOL_CHUNK } from '../spool.js';
import { commandProblem, runStage } from '../stage.js';
import { OWN_CA_NOTE, type TlsMaterial, contextOptions, tlsFromConfig, tlsSchema } from '../net/tls.js';

/** The extended key usage a client certificate must have (RFC 5280 4.2.1.12). */
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

const schema = table({
  domain: string({ check: domainProblem }),
  tls: tlsSchema(),
  servers: domainMap(string({ nonEmpty: true, check: targetProblem }), (d) => asciiDomain(d)),
  dns_srv: optional(boolean(), true),
  dns_servers: optional(list(string({ check: dnsServerProblem })), [] as string[]),
  legacy: optional(string({ oneOf: ['auto', 'never'] }), 'auto'),
  legacy_domains: optional(list(string({ check: domainProblem })), [] as string[]),
  legacy_command: optional(command(), ['smtp-send']),
  max_message_bytes: optional(size({ min: 1024 }), 100 * 1024 * 1024),
  timeouts: table({
    connect: optional(duration(), 30_000),
    result: optional(duration(), 600_000),
    legacy: optional(duration(), 600_000),
  }),
});
type Config = ReturnType<typeof schema.parse>;

const options = (y: Argv) =>
  y.option('recipient', { type: 'string', describe: 'Deliver to this address instead of the header recipients (an envelope); repeatable', requiresArg: true });

/** Where one domain's delivery stands. */
interface Leg {
  group: Group;
  route: Route;
  client?: ImdpClient;
  /** Refusal or failure before DATA. */
  refused?: { temporary: boolean; reason: string };
  /** Final answer after DATA. */
  result?: Answer;
  /** Failure during or after DATA. */
  failed?: Failure;
  /** Result lines from a legacy command. */
  legacyLines?: string[];
  legacyCode?: number;
}

/** Everything a start checks, for --check-config too: our certificate names our domain; the legacy command runs (if any domain may go there). */
function check(config: Config, source: Located, io: Io): TlsMaterial {
  const problem = config.legacy_domains.length || config.legacy === 'auto' ? commandProblem(config.legacy_command, io.env, io.cwd) : undefined;
  if (problem) throw configError(source.file ?? 'send-mail.toml', 'legacy_command', problem);
  const material = tlsFromConfig(config.tls, source, 'send-mail', config.domain);
  // Servers check this at every handshake; heard from them it was a TEMPFAIL a queue retried until the message expired.
  const purposes = material.x509.keyUsage;
  if (purposes && !purposes.includes(CLIENT_AUTH)) {
    throw configError(
      source.file ?? 'send-mail.toml',
      'tls.certificate',
      `${config.tls.certificate}: not for client authentication (no clientAuth in its extended key usage); ${OWN_CA_NOTE}`,
    );
  }
  return material;
}

export async function main(args: string[], io: Io): Promise<number> {
  const s = await start({ name: 'send-mail', role: 'user', usage: '$0 [options] [--recipient ADDRESS]... [FILE] < message', schema, options, check }, args, io);
  if (typeof s === 'number') return s;
  const { argv, config, log } = s;
  if (argv._.length > 1) throw usageError('give at most one message file');
  const material = s.prepared;
  const input = await openInput(argv._[0] === undefined ? undefined : String(argv._[0]), io);
  const mailer = asciiDomain(config.domain);
  const prepared = await prepare(input, mailer, { ...DEFAULT_LIMITS, maxTotalBytes: config.max_message_bytes });
  try {
    const groups = groupRecipients(prepared.headers, envelopeOf(argv.recipient));
    if (groups.length === 0) throw usageError('the message has no recipients (to, cc, bcc)');
    const dns = new Dns(config.dns_servers);
    const legs = await routeAll(groups, config, dns);
    const imdp = legs.filter((l) => l.route.way === 'imdp');
    const tls = contextOptions(material);
    // Phase 1: connect and announce everywhere, in parallel.
    await Promise.all(imdp.map((leg) => announce(leg, prepared, tls, config, dns)));
    const refused = legs.filter((l) => l.refused);
    if (refused.length) return await notSent(imdp, legs, io, log);
    // Phase 2: data to every server (and the legacy command), in parallel.
    const readBuffers = new BufferPool(SPOOL_CHUNK);
    await Promise.all([
      ...imdp.map((leg) => sendData(leg, prepared, config.timeouts.result, readBuffers)),
      ...legs.filter((l) => l.route.way === 'legacy').map((leg) => runLegacy(leg, prepared, config.legacy_command, config.timeouts.legacy, io)),
    ]);
    return report(legs, io);
  } finally {
    await prepared.spool.dispose();
  }
}

/** The --recipient addresses, or undefined when none is given (the headers decide). */
function envelopeOf(given: string | string[] | undefined): Address[] | undefined {
  if (given === undefined) return undefined;
  try {
    return ([] as string[]).concat(given).flatMap((t) => parseAddressList(t));
  } catch (e) {
    if (e instanceof AddressError) throw usageError(`--recipient: ${e.message}`);
    throw e;
  }
}

/**
 * Some domain refused before DATA, so no domain gets the data (ima(7)).
 * Each recipient keeps its own class: a refused domain's recipients its
 * refusal (FAIL or TEMPFAIL), every other recipient TEMPFAIL (not sent; a
 * retry without the refused ones may go through). The exit code is the
 * table's for those lines.
 */
async function notSent(imdp: Leg[], legs: Leg[], io: Io, log: { warn(m: string): void }): Promise<number> {
  await Promise.all(
    imdp.map(async (l) => {
      if (l.client && !l.refused) l.client.sendAbort();
      await l.client?.done().catch(() => {});
    }),
  );
  const refused = legs.filter((l) => l.refused);
  const domains = refused.map((l) => l.group.domain).join(', ');
  const words: Word[] = [];
  for (const l of legs) {
    const word: Word = l.refused && !l.refused.temporary ? 'FAIL' : 'TEMPFAIL';
    const reason = l.refused?.reason ?? `not sent: ${domains} refused the message, and send-mail sends the data to every domain or to none`;
    for (const a of l.group.recipients) {
      words.push(word);
      io.stdout.write(`${formatResult({ word, address: mailboxOf(a), reason })}\n`);
    }
  }
  for (const l of refused) log.warn(`${l.group.domain}: ${l.refused!.reason}`);
  return exitFor(words);
}

/** Each domain's way (IMDP, legacy, or refused before a byte is sent), decided for all domains at once. */
async function routeAll(groups: Group[], config: Config, dns: Dns): Promise<Leg[]> {
  const rc = {
    servers: config.servers,
    legacyDomains: new Set(config.legacy_domains.map((d) => asciiDomain(d))),
    dnsSrv: config.dns_srv,
    legacy: config.legacy as 'auto' | 'never',
    dns,
  };
  return Promise.all(
    groups.map(async (group) => {
      const route = await routeDomain(group.domain, rc);
      const leg: Leg = { group, route };
      if (route.way === 'refused') leg.refused = { temporary: route.temporary, reason: route.reason };
      return leg;
    }),
  );
}

/** Connect to the first target that answers (RFC 2782: on failure, the next); the error of each when none does. */
async function connectFirst(targets: Target[], domain: string, dns: Dns, tls: ReturnType<typeof contextOptions>, config: Config): Promise<ImdpClient> {
  const errors: string[] = [];
  for (const target of targets) {
    let addresses: string[];
    try {
      addresses = await dns.addresses(target.host);
    } catch (e) {
      errors.push(asFailure(e).message);
      continue;
    }
    if (addresses.length === 0) errors.push(`${target.host}: no address (A/AAAA)`);
    for (const host of addresses) {
      try {
        return await ImdpClient.connect({ host, port: target.port, domain, tls, timeout: config.timeouts.connect, resultTimeout: config.timeouts.result });
      } catch (e) {
        errors.push(asFailure(e).message);
      }
    }
  }
  throw tempFail(errors.join('; '), '4.4.1');
}

async function announce(leg: Leg, p: Prepared, tls: ReturnType<typeof contextOptions>, config: Config, dns: Dns): Promise<void> {
  const { domain } = leg.group;
  if (leg.route.way !== 'imdp') return;
  try {
    leg.client = await connectFirst(leg.route.targets, domain, dns, tls, config);
    const copy = await copyFor(p, leg.group);
    leg.client.sendMail(copy.headersRaw, copy.size);
    const a = await leg.client.readAnswer();
    if (a.word !== 'ACCEPT') {
      const detail = a.replies.length ? ` (${a.replies.join('; ')})` : '';
      leg.refused = { temporary: isTemporary(a), reason: `${domain}: ${a.word}${a.status ? ` ${a.status}` : ''} ${a.text}${detail}` };
    }
  } catch (e) {
    const f = asFailure(e);
    leg.refused = { temporary: f.temporary, reason: f.message };
  }
}

async function sendData(leg: Leg, p: Prepared, resultTimeout: number, readBuffers: BufferPool): Promise<void> {
  const client = leg.client!;
  try {
    // The spool's chunks are lent from one pool and come back once the socket took them: no garbage per chunk.
    const copy = await copyFor(p, leg.group, readBuffers);
    await client.sendData(copy.open(), copy.size, readBuffers);
    leg.result = await client.readAnswer(resultTimeout);
    await client.done().catch(() => {});
  } catch (e) {
    leg.failed = asFailure(e);
    client.close();
  }
}

/** A legacy domain: the command gets this domain's copy on stdin and its recipients as arguments; killed (with what it started) at the timeout. */
async function runLegacy(leg: Leg, p: Prepared, argv: readonly string[], timeout: number, io: Io): Promise<void> {
  const copy = await copyFor(p, leg.group);
  const lines: string[] = [];
  leg.legacyLines = lines;
  leg.legacyCode = await runStage({
    argv: [...argv, ...leg.group.recipients.map(mailboxOf)],
    inProcess: false,
    env: io.env,
    cwd: io.cwd,
    input: Readable.from(copy.open()),
    onLine: (l) => lines.push(l),
    stderr: io.stderr,
    timeout,
  });
}

/** One line per recipient and the exit code of the one table. */
function report(legs: Leg[], io: Io): number {
  const words: Word[] = [];
  for (const leg of legs) {
    for (const a of leg.group.recipients) {
      const line = lineFor(leg, a);
      io.stdout.write(`${line}\n`);
      words.push(parseResult(line)?.word ?? 'TEMPFAIL');
    }
  }
  return exitFor(words);
}

function lineFor(leg: Leg, a: Address): string {
  const addr = mailboxOf(a);
  if (leg.failed) return `TEMPFAIL ${addr} ${leg.failed.message}`;
  const replies = leg.legacyLines ?? leg.result?.replies ?? [];
  const word = leg.legacyCode !== undefined ? (['OK', 'FAIL', 'PARTIAL'][leg.legacyCode] ?? 'TEMPFAIL') : leg.result!.word;
  // A recipient's own line decides only where the final status leaves room
  // (PARTIAL) or agrees; an "OK" line before a crash or a timeout is no OK.
  const relayed = relayedResult(replies, a);
  const said = relayed ? parseResult(relayed)!.word : undefined;
  if (relayed && (word === 'PARTIAL' || said === word || (word === 'FAIL' && said === 'NORECIPIENT'))) return relayed;
  const lastReply = replies.length ? `: ${replies[replies.length - 1]}` : '';
  const why =
    leg.result?.text ||
    (leg.legacyCode !== undefined ? `${leg.group.domain}: the legacy command exited ${leg.legacyCode}` : `${leg.group.domain} answered ${word}`) + lastReply;
  if (word === 'OK') return `OK ${addr}`;
  if (word === 'FAIL') return `FAIL ${addr} ${why}`;
  return `TEMPFAIL ${addr} ${word === 'PARTIAL' ? `${leg.group.domain} answered PARTIAL without a line for this recipient` : why}`;
}
