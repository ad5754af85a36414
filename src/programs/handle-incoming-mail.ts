// handle-incoming-mail: route each local recipient of a message through the
// routing table to its command (usually give-recipient), and answer one
// result line per recipient.
//
// It does not store mail itself, does not forward to other domains
// (addresses there are left alone), and never answers OK for a recipient
// whose command did not exit 0.
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import type { Argv } from 'yargs';
import { type Address, AddressError, addressKey, domainProblem, mailboxOf, parseAddressList } from '../address.js';
import { openInput, start } from '../cli.js';
import { type Located, boolean, command, duration, integer, list, map, optional, size, string, table } from '../config.js';
import { EXIT, configError, dataError, usageError } from '../failure.js';
import { type Word, exitFor, formatResult, parseResult } from '../results.js';
import { commandProblem, runStage } from '../stage.js';
import { DEFAULT_LIMITS, type Headers, MessageError, TarWalker, parseHeaders, plainHeaders, readMessage } from '../message/index.js';
import { type Resolution, Router } from '../routing.js';
import type { Io } from '../io.js';
import { Spool, SpoolLimitError } from '../spool.js';
import { chunksOf } from '../streams.js';

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
  const chunks = chunksOf(input);
  const first: Buffer[] = [];
  let n = 0;
  while (n < 512) {
    const r = await chunks.next();
    if (r.done) break;
    first.push(r.value);
    n += r.value.length;
  }
  const head = first.length === 1 ? first[0] : Buffer.concat(first);
  const isTar = head.length >= 512 && head.subarray(257, 262).toString('latin1') === 'ustar';
  const rest = Readable.from(
    (async function* () {
      yield head;
      yield* chunks;
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
  const message = new CheckedInput(await openInput(positional[0], io), config);
  const out = (line: string) => io.stdout.write(`${line}\n`);
  let head: Buffer[];
  try {
    head = await message.head();
  } catch (e) {
    return refused(e, message, envelope, config, router, io, log);
  }
  // Quietly for now: should the rest of the message fail its checks, that verdict comes first.
  const plans = await planFor(head, envelope, config.max_header_bytes, router, () => {}, { warn() {}, info() {} });
  const jobs = typeof plans === 'number' ? new Map<string, Job>() : jobsOf(plans);
  // One command to run: the message streams through to it as it arrives, checked on the way.
  if (typeof plans !== 'number' && jobs.size === 1) return streamToOne(message, envelope, plans, jobs, config, router, io, log);
  let spool: Spool;
  try {
    spool = await Spool.from(message.all(), { dir: config.spool_dir || undefined });
  } catch (e) {
    return refused(e, message, envelope, config, router, io, log);
  }
  try {
    if (typeof plans === 'number') {
      // Said now, once the whole message has passed its checks (their verdict comes first).
      await planFor(head, envelope, config.max_header_bytes, router, out, log);
      return plans;
    }
    await pool([...jobs.values()], config.max_parallel, async (job) => {
      job.outcome = await runRoute(job.argv, job.address, spool.open(), config, io);
    });
    return report(plans, (r) => outcomeFor(r, jobs), out);
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
 * The message (FILE or stdin), read once: every chunk counted against the
 * size limit and walked by the tar guard as it comes (entries counted,
 * types checked), so a bomb of entries is refused before it is read whole.
 * First its head, which holds the headers entry; then all of it, head first.
 */
class CheckedInput {
  private readonly guard: TarWalker;
  private readonly chunks: AsyncIterator<Buffer>;
  private size = 0;
  private first: Buffer[] | undefined;
  /** The input has ended: what head() read is the whole message, checked. */
  ended = false;

  constructor(
    input: Readable,
    private readonly config: { max_message_bytes: number; max_header_bytes: number; max_entries: number },
  ) {
    this.guard = new TarWalker({
      ...DEFAULT_LIMITS,
      maxEntries: config.max_entries,
      maxHeaderBytes: config.max_header_bytes,
      maxTotalBytes: config.max_message_bytes,
    });
    this.chunks = chunksOf(input);
  }

  /** The next chunk, checked; undefined at the end. */
  private async next(): Promise<Buffer | undefined> {
    const r = await this.chunks.next();
    if (r.done) {
      this.ended = true;
      return undefined;
    }
    const chunk = r.value;
    this.size += chunk.length;
    if (this.size > this.config.max_message_bytes) throw new SpoolLimitError(`more than ${this.config.max_message_bytes} bytes`);
    this.guard.inspect(chunk);
    return chunk;
  }

  /** The first bytes, enough for the headers entry and a pax or long-name entry before it (or the whole of a shorter message). */
  async head(): Promise<Buffer[]> {
    const want = this.config.max_header_bytes + DEFAULT_LIMITS.maxMetaBytes + 4096;
    const parts: Buffer[] = [];
    let n = 0;
    for (let c = await this.next(); c; c = n < want ? await this.next() : undefined) {
      parts.push(c);
      n += c.length;
    }
    // Kept as the chunks it came in: joining them would copy them.
    this.first = parts;
    return parts;
  }

  /** What head() read, if it got that far. */
  get headBytes(): Buffer[] {
    return this.first ?? [];
  }

  /** The whole message, the head first; throws at the first broken check or read error. */
  async *all(): AsyncGenerator<Buffer> {
    if (this.first) yield* this.first;
    for (let c = await this.next(); c; c = await this.next()) yield c;
  }
}

/** The message failed its checks or could not be read: its result lines and exit code. */
function refused(
  e: unknown,
  message: CheckedInput,
  envelope: string[],
  config: { max_message_bytes: number; max_header_bytes: number },
  router: Router,
  io: Io,
  log: Log,
): Promise<number> | number {
  const out = (line: string) => io.stdout.write(`${line}\n`);
  if (e instanceof SpoolLimitError) {
    out(`FAIL - 5.3.4 message larger than the limit of ${config.max_message_bytes} bytes`);
    return EXIT.FAIL;
  }
  if (e instanceof MessageError) {
    out(`FAIL - ${e.status} ${e.message}`);
    return EXIT.FAIL;
  }
  if (!(e as NodeJS.ErrnoException).code) throw e;
  return spoolTrouble(message.headBytes, `4.3.0 cannot spool the message: ${(e as Error).message}`, envelope, config, router, io, log);
}

/**
 * The one command gets the message as it arrives. Should the rest fail its
 * checks on the way, the command is stopped and the message refused as if
 * it had been spooled first; its own answer then counts for nothing.
 */
async function streamToOne(
  message: CheckedInput,
  envelope: string[],
  plans: Plans,
  jobs: Map<string, Job>,
  config: { command_timeout: number; in_process: boolean; max_message_bytes: number; max_header_bytes: number },
  router: Router,
  io: Io,
  log: Log,
): Promise<number> {
  const stop = new AbortController();
  const stopOnParent = () => stop.abort(io.signal?.reason);
  io.signal?.addEventListener('abort', stopOnParent, { once: true });
  let problem: unknown;
  // A message no longer than its head has been read and checked whole already: handed on as it is.
  const input = message.ended
    ? Readable.from(message.headBytes, { objectMode: false })
    : Readable.from(
        (async function* () {
          try {
            yield* message.all();
          } catch (e) {
            problem = e;
            stop.abort(e);
            throw e;
          }
        })(),
        { objectMode: false },
      );
  input.on('error', () => {}); // the command sees it as its input ending badly; `problem` keeps it
  const read = finished(input).catch(() => {});
  try {
    const [job] = jobs.values();
    job.outcome = await runRoute(job.argv, job.address, input, config, { ...io, signal: stop.signal });
    // The command may stop reading early (a refusal): the rest still passes the checks, so a bad message is told as one.
    input.resume();
    await read;
  } finally {
    io.signal?.removeEventListener('abort', stopOnParent);
  }
  if (problem !== undefined) return refused(problem, message, envelope, config, router, io, log);
  return report(
    plans,
    (r) => outcomeFor(r, jobs),
    (line) => io.stdout.write(`${line}\n`),
  );
}

type Plans = Map<Address, Resolution>;
type Log = { warn(m: string): void; info(m: string): void };
type Out = (line: string) => void;

/** Each local recipient and what the routing table makes of it; an exit code when there is nothing to deliver. */
async function planFor(data: Readable | Buffer[], envelope: string[], maxHeaderBytes: number, router: Router, out: Out, log: Log): Promise<Plans | number> {
  let recipients: Address[];
  try {
    // The usual head is read here directly; any other layout by the tar reader.
    const plain = Array.isArray(data) && data.length ? plainHeaders(data[0], { ...DEFAULT_LIMITS, maxHeaderBytes }) : undefined;
    const headers = plain ?? (await headersOnly(Array.isArray(data) ? Readable.from(data) : data, maxHeaderBytes));
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
  head: Buffer[],
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

/** A command to run for the message: each distinct target once, even when several recipients (aliases) lead to it. */
interface Job {
  address: Address;
  argv: string[];
  outcome?: Outcome;
}

function jobsOf(plans: Plans): Map<string, Job> {
  const jobs = new Map<string, Job>();
  for (const r of plans.values()) if (r.kind === 'deliver') for (const t of r.targets) jobs.set(addressKey(t.address), { ...t });
  return jobs;
}

/** One recipient's result from its targets: any temporary failure wins (a retry is safe: mailboxes store a message once). */
function outcomeFor(r: Resolution, jobs: Map<string, { outcome?: Outcome }>): Outcome {
  if (r.kind === 'norecipient') return { word: 'NORECIPIENT', reason: '' };
  if (r.kind === 'fail') return { word: 'FAIL', reason: `5.3.5 ${r.reason}` };
  const outcomes = r.targets.map((t) => jobs.get(addressKey(t.address))!.outcome!);
  return outcomes.find((o) => o.word === 'TEMPFAIL') ?? outcomes.find((o) => o.word !== 'OK') ?? { word: 'OK', reason: '' };
}

async function runRoute(
  argv: string[],
  address: Address,
  data: Readable | Buffer,
  config: { command_timeout: number; in_process: boolean },
  io: Io,
): Promise<Outcome> {
  let said: Outcome | undefined;
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
