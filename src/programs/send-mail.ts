// send-mail: deliver a message to every recipient domain's IMDP server
// (ima(7)): headers first to all of them, data only when every one said
// ACCEPT, in parallel, from one spooled copy; one result line per recipient.
//
// It does not queue or retry (a failed run leaves the sender holding the
// message, exit 75 or 1 says which), does not speak SMTP (legacy domains go
// to the configured command), and never shows a domain another domain's bcc.
import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { resolve } from 'node:path';
import { Readable } from 'node:stream';
import type { Argv } from 'yargs';
import { type Address, AddressError, asciiDomain, domainProblem, mailboxOf, parseAddressList } from '../address.js';
import { start } from '../cli.js';
import { type Located, boolean, command, duration, list, map, optional, size, string, table } from '../config.js';
import { EXIT, type Failure, asFailure, configError, noInput, tempFail, usageError } from '../failure.js';
import { ImdpClient } from '../imdp/client.js';
import { type Answer, isTemporary } from '../imdp/wire.js';
import { DEFAULT_LIMITS } from '../message/index.js';
import { type Group, type Prepared, copyFor, findServer, groupRecipients, prepare, relayedResult } from '../imdp/send.js';
import type { Io } from '../io.js';
import { type Word, exitFor, parseResult } from '../results.js';
import { LineSplitter, commandProblem } from '../stage.js';
import { type TlsMaterial, contextOptions, tlsFromConfig, tlsSchema } from '../net/tls.js';

const schema = table({
  domain: string({ check: domainProblem }),
  tls: tlsSchema(),
  servers: map(string({ nonEmpty: true }), domainProblem),
  dns_srv: optional(boolean(), true),
  legacy_domains: optional(list(string({ check: domainProblem })), [] as string[]),
  legacy_command: optional(command(), ['smtp-send']),
  max_message_bytes: optional(size({ min: 1024 }), 100 * 1024 * 1024),
  timeouts: table({
    connect: optional(duration(), 30_000),
    result: optional(duration(), 600_000),
  }),
});
type Config = ReturnType<typeof schema.parse>;

const options = (y: Argv) =>
  y.option('recipient', { type: 'string', describe: 'Deliver to this address instead of the header recipients (an envelope); repeatable', requiresArg: true });

/** Where one domain's delivery stands. */
interface Leg {
  group: Group;
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

/** Everything a start checks, for --check-config too: our certificate names our domain; the legacy command runs. */
function check(config: Config, source: Located, io: Io): TlsMaterial {
  const problem = config.legacy_domains.length ? commandProblem(config.legacy_command, io.env, io.cwd) : undefined;
  if (problem) throw configError(source.file ?? 'send-mail.toml', 'legacy_command', problem);
  return tlsFromConfig(config.tls, source, 'send-mail', config.domain);
}

export async function main(args: string[], io: Io): Promise<number> {
  const s = await start({ name: 'send-mail', role: 'user', usage: '$0 [options] [--recipient ADDRESS]... [FILE] < message', schema, options, check }, args, io);
  if (typeof s === 'number') return s;
  const { argv, config, log } = s;
  if (argv._.length > 1) throw usageError('give at most one message file');
  const material = s.prepared;
  const file = argv._[0] === undefined ? undefined : resolve(io.cwd, String(argv._[0]));
  const input = file ? await openFile(file) : io.stdin;
  const mailer = asciiDomain(config.domain);
  const prepared = await prepare(input, mailer, { ...DEFAULT_LIMITS, maxTotalBytes: config.max_message_bytes });
  try {
    const groups = groupRecipients(prepared.headers, envelopeOf(argv.recipient));
    if (groups.length === 0) throw usageError('the message has no recipients (to, cc, bcc)');
    const legacy = new Set(config.legacy_domains.map((d) => asciiDomain(d)));
    const legs: Leg[] = groups.map((group) => ({ group }));
    const imdp = legs.filter((l) => !legacy.has(l.group.domain));
    const tls = contextOptions(material);
    // Phase 1: connect and announce everywhere, in parallel.
    await Promise.all(imdp.map((leg) => announce(leg, prepared, tls, config)));
    const refused = imdp.filter((l) => l.refused);
    if (refused.length) {
      await Promise.all(
        imdp.map(async (l) => {
          if (l.client && !l.refused) l.client.sendAbort();
          await l.client?.done().catch(() => {});
        }),
      );
      const temporary = refused.every((l) => l.refused!.temporary);
      const domains = refused.map((l) => l.group.domain).join(', ');
      for (const l of legs) {
        const why = l.refused?.reason ?? `not sent: ${domains} refused the message, and send-mail sends to all or none`;
        for (const a of l.group.recipients) io.stdout.write(`${temporary ? 'TEMPFAIL' : 'FAIL'} ${mailboxOf(a)} ${why}\n`);
      }
      for (const l of refused) log.warn(`${l.group.domain}: ${l.refused!.reason}`);
      return temporary ? EXIT.TEMPFAIL : EXIT.FAIL;
    }
    // Phase 2: data to every server (and the legacy command), in parallel.
    await Promise.all([
      ...imdp.map((leg) => sendData(leg, prepared, config.timeouts.result)),
      ...legs.filter((l) => legacy.has(l.group.domain)).map((leg) => runLegacy(leg, prepared, config.legacy_command, io)),
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

async function openFile(file: string): Promise<Readable> {
  const stream = createReadStream(file);
  await new Promise<void>((res, rej) => {
    stream.once('open', () => res());
    stream.once('error', (e: NodeJS.ErrnoException) => rej(noInput(file, e.code === 'ENOENT' ? 'no such file' : `cannot read (${e.code})`)));
  });
  return stream;
}

async function announce(
  leg: Leg,
  p: Prepared,
  tls: ReturnType<typeof contextOptions>,
  config: { servers: Record<string, string>; dns_srv: boolean; timeouts: { connect: number; result: number } },
): Promise<void> {
  const { domain } = leg.group;
  try {
    const target = await findServer(domain, config.servers, config.dns_srv);
    leg.client = await ImdpClient.connect({
      host: target.host,
      port: target.port,
      domain,
      tls,
      timeout: config.timeouts.connect,
      resultTimeout: config.timeouts.result,
    });
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

async function sendData(leg: Leg, p: Prepared, resultTimeout: number): Promise<void> {
  const client = leg.client!;
  try {
    const copy = await copyFor(p, leg.group);
    await client.sendData(copy.open(), copy.size);
    leg.result = await client.readAnswer(resultTimeout);
    await client.done().catch(() => {});
  } catch (e) {
    leg.failed = asFailure(e);
    client.close();
  }
}

/** A legacy domain: the command gets this domain's copy on stdin and its recipients as arguments. */
async function runLegacy(leg: Leg, p: Prepared, argv: readonly string[], io: Io): Promise<void> {
  const copy = await copyFor(p, leg.group);
  const lines: string[] = [];
  leg.legacyLines = lines;
  leg.legacyCode = await new Promise<number>((res) => {
    const child = spawn(argv[0], [...argv.slice(1), ...leg.group.recipients.map(mailboxOf)], {
      env: io.env as NodeJS.ProcessEnv,
      cwd: io.cwd,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    child.stdout.pipe(new LineSplitter((l) => lines.push(l)));
    child.stderr.pipe(io.stderr, { end: false });
    child.stdin.on('error', () => {});
    Readable.from(copy.open()).pipe(child.stdin);
    child.on('error', (e) => {
      leg.failed = tempFail(`${argv[0]}: ${e.message}`);
    });
    child.on('close', (code) => res(code ?? EXIT.TEMPFAIL));
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
  const relayed = relayedResult(replies, a);
  if (relayed) return relayed;
  const word = leg.legacyCode !== undefined ? (['OK', 'FAIL', 'PARTIAL'][leg.legacyCode] ?? 'TEMPFAIL') : leg.result!.word;
  const lastReply = replies.length ? `: ${replies[replies.length - 1]}` : '';
  const why = leg.result?.text || `${leg.group.domain} answered ${word}${lastReply}`;
  if (word === 'OK') return `OK ${addr}`;
  if (word === 'FAIL') return `FAIL ${addr} ${why}`;
  return `TEMPFAIL ${addr} ${word === 'PARTIAL' ? `${leg.group.domain} answered PARTIAL without a line for this recipient` : why}`;
}
