// handle-incoming-mail: route each local recipient of a message through the
// routing table to its command (usually give-recipient), and answer one
// result line per recipient.
//
// It does not store mail itself, does not forward to other domains
// (addresses there are left alone), and never answers OK for a recipient
// whose command did not exit 0.
import { Readable } from 'node:stream';
import type { Argv } from 'yargs';
import { type Address, AddressError, addressKey, domainProblem, mailboxOf, parseAddressList } from '../address.js';
import { openInput, start } from '../cli.js';
import { type Located, boolean, command, duration, integer, list, map, optional, size, string, table } from '../config.js';
import { EXIT, configError, dataError, usageError } from '../failure.js';
import { type Word, exitFor, formatResult, parseResult } from '../results.js';
import { commandProblem, runStage } from '../stage.js';
import { DEFAULT_LIMITS, type Headers, MessageError, TarGuard, parseHeaders, readMessage } from '../message/index.js';
import { type Resolution, Router } from '../routing.js';
import type { Io } from '../io.js';
import { Spool, SpoolLimitError } from '../spool.js';

const schema = table({
  domains: map(
    table({
      command: optional(command(), [] as string[]),
      users: optional(list(string({ nonEmpty: true })), undefined as string[] | undefined),
      catch_all: optional(string(), undefined as string | undefined),
    }),
  ),
  routes: map(command()),
  aliases: map(list(string(), { nonEmpty: true })),
  max_parallel: optional(integer({ min: 1, max: 256 }), 4),
  command_timeout: optional(duration(), 5 * 60 * 1000),
  in_process: optional(boolean(), true),
  max_message_bytes: optional(size({ min: 1024 }), 1024 ** 3),
  max_header_bytes: optional(size({ min: 256 }), DEFAULT_LIMITS.maxHeaderBytes),
  max_entries: optional(integer({ min: 1 }), DEFAULT_LIMITS.maxEntries),
  spool_dir: optional(string(), ''),
});
type Config = ReturnType<typeof schema.parse>;

const options = (y: Argv) =>
  y
    .option('check', { type: 'boolean', describe: 'Only say which recipients exist (OK/NORECIPIENT); read headers only, deliver nothing' })
    .option('recipient', { type: 'string', describe: 'Deliver to this address instead of the header recipients (an envelope); repeatable', requiresArg: true });

interface Outcome {
  word: Word;
  reason: string;
}
function recipientsOf(h: Headers): Address[] {
  return ['to', 'cc', 'bcc'].flatMap((f) => {
    const v = h.get(f);
    return v ? parseAddressList(v) : [];
  });
}

function unique(list: Address[]): Address[] {
  const seen = new Set<string>();
  return list.filter((a) => !seen.has(addressKey(a)) && seen.add(addressKey(a)));
}

/** Read the headers of what is on stdin: a whole message (tar) or a bare headers entry. */
async function headersOnly(input: Readable, maxBytes: number): Promise<Headers> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of input) {
    chunks.push(c as Buffer);
    n += (c as Buffer).length;
    if (n >= 512) break;
  }
  const head = Buffer.concat(chunks);
  const isTar = head.length >= 512 && head.subarray(257, 262).toString('latin1') === 'ustar';
  const rest = Readable.from(
    (async function* () {
      yield head;
      yield* input;
    })(),
  );
  if (isTar) {
    for await (const e of readMessage(rest, { ...DEFAULT_LIMITS, maxHeaderBytes: maxBytes })) if (e.kind === 'headers') return e.headers;
    throw new MessageError('no headers entry');
  }
  const all: Buffer[] = [];
  let size = 0;
  for await (const c of rest) {
    size += (c as Buffer).length;
    if (size > maxBytes) throw new MessageError(`headers larger than the limit of ${maxBytes} bytes`);
    all.push(c as Buffer);
  }
  return parseHeaders(Buffer.concat(all));
}

/** Run jobs with at most `limit` at a time. */
async function pool<T>(items: T[], limit: number, each: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await each(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** Everything a start checks, for --check-config too: domains, the routing table, every command. */
function check(config: Config, source: Located, io: Io): Router {
  const file = source.file ?? 'handle-incoming-mail.toml';
  for (const d of Object.keys(config.domains)) {
    const problem = domainProblem(d);
    if (problem) throw configError(file, `domains."${d}"`, problem);
  }
  const commands: [string, readonly string[]][] = [
    ...Object.entries(config.domains).map(([d, r]): [string, readonly string[]] => [`domains."${d}".command`, r.command]),
    ...Object.entries(config.routes).map(([a, argv]): [string, readonly string[]] => [`routes."${a}"`, argv]),
  ];
  for (const [key, argv] of commands) {
    const problem = argv.length && !argv[0].includes('{') ? commandProblem(argv, io.env, io.cwd) : undefined;
    if (problem) throw configError(file, key, problem);
  }
  try {
    return new Router(config);
  } catch (e) {
    throw configError(file, '', (e as Error).message);
  }
}

export async function main(args: string[], io: Io): Promise<number> {
  const s = await start(
    {
      name: 'handle-incoming-mail',
      role: 'server',
      notAsRoot: true,
      usage: '$0 [--recipient ADDRESS]... [FILE] < message\n$0 --check [ADDRESS...] < headers',
      schema,
      options,
      check,
    },
    args,
    io,
  );
  if (typeof s === 'number') return s;
  const { argv, config, log } = s;
  const router = s.prepared;
  const positional = argv._.map(String);
  const envelope = argv.recipient === undefined ? [] : ([] as string[]).concat(argv.recipient);
  if (argv.check) return checkRecipients(parseRecipients([...envelope, ...positional]), router, config.max_header_bytes, io, log);
  if (positional.length > 1) throw usageError('at most one FILE');
  const spool = await spoolMessage(positional[0], envelope, config, router, io, log);
  if (typeof spool === 'number') return spool;
  try {
    return await deliver(spool, envelope, config, router, io, log);
  } finally {
    await spool.dispose();
  }
}

/** Addresses given on the command line, each once; a bad one is a usage error. */
function parseRecipients(list: string[]): Address[] {
  try {
    return unique(list.flatMap((t) => parseAddressList(t)));
  } catch (e) {
    if (e instanceof AddressError) throw usageError(e.message);
    throw e;
  }
}

/** --check: say which recipients exist (given, else from the headers on stdin); deliver nothing. */
async function checkRecipients(given: Address[], router: Router, maxHeaderBytes: number, io: Io, log: { warn(m: string): void }): Promise<number> {
  let recipients = given;
  if (recipients.length === 0) {
    try {
      recipients = unique(recipientsOf(await headersOnly(io.stdin, maxHeaderBytes)));
    } catch (e) {
      if (e instanceof MessageError) throw dataError(e.message);
      throw e;
    }
  }
  const words: Word[] = [];
  for (const a of recipients.filter((r) => router.isLocal(r))) {
    const r = router.resolve(a);
    const word: Word = r.kind === 'deliver' ? 'OK' : r.kind === 'norecipient' ? 'NORECIPIENT' : 'FAIL';
    words.push(word);
    io.stdout.write(`${formatResult({ word, address: mailboxOf(a), reason: r.kind === 'fail' ? `5.3.5 ${r.reason}` : '' })}\n`);
  }
  if (!words.length) log.warn('no recipient in a local domain');
  return exitFor(words);
}

/**
 * The message (FILE or stdin) spooled once for every route, or the exit
 * code after its result lines. The tar structure is walked while it spools
 * (entries counted, types checked), so a bomb of entries is refused before
 * it is read whole; the first bytes are kept to name the recipients if the
 * spool itself fails.
 */
async function spoolMessage(
  file: string | undefined,
  envelope: string[],
  config: { max_message_bytes: number; max_header_bytes: number; max_entries: number; spool_dir: string },
  router: Router,
  io: Io,
  log: Log,
): Promise<Spool | number> {
  const out = (line: string) => io.stdout.write(`${line}\n`);
  const input = await openInput(file, io);
  const guard = new TarGuard({
    ...DEFAULT_LIMITS,
    maxEntries: config.max_entries,
    maxHeaderBytes: config.max_header_bytes,
    maxTotalBytes: config.max_message_bytes,
  });
  const head: Buffer[] = [];
  let headBytes = 0;
  try {
    return await Spool.from(input, {
      limit: config.max_message_bytes,
      dir: config.spool_dir || undefined,
      inspect: (chunk) => {
        if (headBytes < HEAD_BYTES) {
          head.push(chunk);
          headBytes += chunk.length;
        }
        guard.inspect(chunk);
      },
    });
  } catch (e) {
    if (e instanceof SpoolLimitError) {
      out(`FAIL - 5.3.4 message larger than the limit of ${config.max_message_bytes} bytes`);
      return EXIT.FAIL;
    }
    if (e instanceof MessageError) {
      out(`FAIL - ${e.status} ${e.message}`);
      return EXIT.FAIL;
    }
    if (!(e as NodeJS.ErrnoException).code) throw e;
    return spoolTrouble(Buffer.concat(head), `4.3.0 cannot spool the message: ${(e as Error).message}`, envelope, config, router, io, log);
  }
}

/** Bytes kept from the start of a message: enough for the headers entry and the pax or long-name entry before it. */
const HEAD_BYTES = DEFAULT_LIMITS.maxHeaderBytes + DEFAULT_LIMITS.maxMetaBytes + 4096;

type Plans = Map<Address, Resolution>;
type Log = { warn(m: string): void; info(m: string): void };
type Out = (line: string) => void;

/** Each local recipient and what the routing table makes of it; an exit code when there is nothing to deliver. */
async function planFor(data: Readable | Buffer, envelope: string[], maxHeaderBytes: number, router: Router, out: Out, log: Log): Promise<Plans | number> {
  let recipients: Address[];
  try {
    const headers = await headersOnly(Buffer.isBuffer(data) ? Readable.from([data]) : data, maxHeaderBytes);
    recipients = envelope.length ? unique(envelope.flatMap((t) => parseAddressList(t))) : unique(recipientsOf(headers));
  } catch (e) {
    if (e instanceof MessageError || e instanceof AddressError) {
      out(`FAIL - 5.6.0 ${e.message}`);
      return EXIT.FAIL;
    }
    throw e;
  }
  const local = recipients.filter((r) => router.isLocal(r));
  if (!local.length) {
    log.warn('no recipient in a local domain: nothing delivered');
    return EXIT.FAIL;
  }
  return new Map<Address, Resolution>(local.map((a) => [a, router.resolve(a)]));
}

/** One result line per recipient; the exit code of them all. */
function report(plans: Plans, outcome: (r: Resolution) => Outcome, out: Out): number {
  const words: Word[] = [];
  for (const [a, r] of plans) {
    const o = outcome(r);
    words.push(o.word);
    out(formatResult({ word: o.word, address: mailboxOf(a), reason: o.reason }));
  }
  return exitFor(words);
}

/** The spool failed (disk full, a file size limit): every recipient that would have been delivered to is told TEMPFAIL. */
async function spoolTrouble(
  head: Buffer,
  reason: string,
  envelope: string[],
  config: { max_header_bytes: number },
  router: Router,
  io: Io,
  log: Log,
): Promise<number> {
  const out = (line: string) => io.stdout.write(`${line}\n`);
  let plans: Plans | number;
  try {
    plans = await planFor(head, envelope, config.max_header_bytes, router, () => {}, log);
  } catch {
    plans = EXIT.FAIL;
  }
  if (typeof plans === 'number') {
    // Not even the headers were spooled: one line for the whole message.
    out(`TEMPFAIL - ${reason}`);
    return EXIT.TEMPFAIL;
  }
  log.warn(reason);
  return report(plans, (r) => (r.kind === 'deliver' ? { word: 'TEMPFAIL', reason } : outcomeFor(r, new Map())), out);
}

async function deliver(
  spool: Spool,
  envelope: string[],
  config: { max_parallel: number; command_timeout: number; in_process: boolean; max_header_bytes: number },
  router: Router,
  io: Io,
  log: Log,
): Promise<number> {
  const out = (line: string) => io.stdout.write(`${line}\n`);
  const plans = await planFor(spool.open(), envelope, config.max_header_bytes, router, out, log);
  if (typeof plans === 'number') return plans;
  // Each distinct target runs once, even when several recipients (aliases) lead to it.
  const jobs = new Map<string, { address: Address; argv: string[]; outcome?: Outcome }>();
  for (const r of plans.values()) if (r.kind === 'deliver') for (const t of r.targets) jobs.set(addressKey(t.address), { ...t });
  await pool([...jobs.values()], config.max_parallel, async (job) => {
    job.outcome = await runRoute(job.argv, job.address, spool, config, io);
  });
  return report(plans, (r) => outcomeFor(r, jobs), out);
}

/** One recipient's result from its targets: any temporary failure wins (a retry is safe: mailboxes store a message once). */
function outcomeFor(r: Resolution, jobs: Map<string, { outcome?: Outcome }>): Outcome {
  if (r.kind === 'norecipient') return { word: 'NORECIPIENT', reason: '' };
  if (r.kind === 'fail') return { word: 'FAIL', reason: `5.3.5 ${r.reason}` };
  const outcomes = r.targets.map((t) => jobs.get(addressKey(t.address))!.outcome!);
  return outcomes.find((o) => o.word === 'TEMPFAIL') ?? outcomes.find((o) => o.word !== 'OK') ?? { word: 'OK', reason: '' };
}

async function runRoute(argv: string[], address: Address, spool: Spool, config: { command_timeout: number; in_process: boolean }, io: Io): Promise<Outcome> {
  let said: Outcome | undefined;
  const data = spool.open();
  const code = await runStage({
    argv,
    inProcess: config.in_process,
    env: io.env,
    cwd: io.cwd,
    input: Buffer.isBuffer(data) ? Readable.from([data]) : data,
    onLine: (line) => {
      const r = parseResult(line);
      if (r) said = r;
      else io.stdout.write(`${line}\n`); // not a result line: relayed as it comes
    },
    stderr: io.stderr,
    timeout: config.command_timeout,
    signal: io.signal,
  });
  // The exit code decides; the command's own words only supply the reason.
  if (code === EXIT.OK) return { word: 'OK', reason: '' };
  if (code === EXIT.FAIL)
    return said?.word === 'NORECIPIENT'
      ? { word: 'NORECIPIENT', reason: '' }
      : { word: 'FAIL', reason: said?.reason || `5.0.0 ${argv[0]} refused the message (exit 1)` };
  return {
    word: 'TEMPFAIL',
    reason:
      said?.word === 'TEMPFAIL' && said.reason
        ? said.reason
        : `4.3.0 ${argv[0]} ${code === EXIT.TEMPFAIL ? 'failed temporarily' : `exited ${code}`} for ${mailboxOf(address)}`,
  };
}
