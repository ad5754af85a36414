// The receiving side of IMDP (ima(7)): one session on a verified TLS
// connection. Commands are read through the bounded line reader and
// dispatched from a table; each accepted message is re-read entry by entry
// (so the handler only ever sees a valid message), its headers entry checked
// against the announcement, a `received` line added, and the result piped to
// the handler whose lines are relayed as REPLY and whose exit code becomes
// the final status.
import { randomBytes } from 'node:crypto';
import { PassThrough, Readable, type Writable } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { AddressError, asciiDomain, parseAddress } from '../address.js';
import { Failure, describe } from '../failure.js';
import { finalFor } from '../results.js';
import { runStage } from '../stage.js';
import * as wire from './wire.js';
import { LineError, LineReader } from '../net/lines.js';
import { WriteError, backpressure } from '../net/writes.js';
import type { Peer } from '../net/listen.js';
import type { Log } from '../log.js';
import { type Entry, type Headers, MessageError, type OutEntry, mtimeOf, parseHeaders, readMessage, writeEntries } from '../message/index.js';
import { certCoversDomain, fingerprint256 } from '../net/tls.js';

export interface SessionLimits {
  maxMessageSize: number;
  maxHeaderBytes: number;
  /** Entries in one message (limits.max_entries). */
  maxEntries: number;
  maxLine: number;
  maxMessages: number;
  maxHops: number;
  maxErrors: number;
  /** Bytes per second DATA must average (after the command timeout); 0 = none. */
  minDataRate: number;
}

export interface SessionTimeouts {
  idle: number;
  /** How long a connection may go without its first MAIL. */
  firstMessage: number;
  /** How long one command (a line, or MAIL with its headers) may take once begun. */
  command: number;
  data: number;
  handler: number;
}

export interface SessionConfig {
  /** Our domain: the greeting and the `received` lines. */
  domain: string;
  limits: SessionLimits;
  timeouts: SessionTimeouts;
  handler: string[];
  /** Run before ACCEPT with the announced headers on stdin; empty = none. */
  check: string[];
  inProcess: boolean;
  env: Record<string, string | undefined>;
  cwd: string;
  log: Log;
  /** The server's stderr, for handler diagnostics. */
  stderr: Writable;
  /** Told of outcomes, for metrics. */
  observe?: SessionObserver;
}

export interface SessionObserver {
  /** A message whose DATA was read: its final status (or drop) and its size. */
  message(result: string, bytes: number): void;
  /** A MAIL answered REJECT. */
  rejected(status: string): void;
  /** The handler ran this long (seconds) and ended with this final status. */
  handler(seconds: number, result: string): void;
}

interface Announced {
  size: number;
  raw: Buffer;
  headers?: Headers;
  senderDomain?: string;
  /** Does from's domain equal senderDomain (the domain the certificate proved)? Not implied: see ima(7). */
  aligned?: boolean;
  /** Set when the answer was REJECT: a DATA that follows anyway is discarded. */
  rejected?: { status: string; text: string };
}

class Drop extends Error {
  /** A stall or a too slow peer, not a broken connection: the peer may still read a BYE saying why (ima(7)). */
  constructor(
    message: string,
    readonly sayBye = false,
  ) {
    super(message);
  }
}

/** A read that failed: a timeout ends the session with a BYE, anything else drops it. */
const dropFor = (e: unknown) => new Drop(describe(e), e instanceof LineError && e.kind === 'timeout');

/** Bytes of answers the peer has not read yet before we stop reading its commands. */
export const REPLY_BUFFER = 64 * 1024;
/** ms an answer may be held back for the next (a handler's REPLY line for the final answer, ACCEPT for the result). */
const HOLD = 20;
/**
 * Messages of one connection being delivered at once. A message whose data
 * has all been read is finished (the handler's writes and fsyncs) while the
 * next commands are read: a pipelining peer's messages are stored side by
 * side instead of each waiting for the disk in turn, and their answers still
 * go out in order. Each holds at most the buffers between the connection and
 * its handler (512 KiB).
 */
const MAX_IN_FLIGHT = 4;

/**
 * The answers of one message's DATA (its handler's REPLY lines, the final
 * answer), or answers of later commands kept while one before them is still
 * to come. Answers go out in the order of the commands (ima(7)).
 */
interface Turn {
  lines: string[];
  /** More may come: a delivery that has not answered yet. */
  open: boolean;
}

/**
 * Is the from address in the domain the certificate proved? The certificate
 * proves only who sent (the mailer's domain); a server may send for
 * addresses of other domains, so this is told to the handler, not enforced.
 */
function fromAligned(from: string | undefined, senderDomain: string): boolean {
  if (!from) return false;
  try {
    return parseAddress(from).asciiDomain.toLowerCase() === senderDomain.toLowerCase();
  } catch (e) {
    if (e instanceof AddressError) return false;
    throw e;
  }
}

/** Count `received` lines: the hop count. */
const hops = (h: Headers) => h.getAll('received').length;

export class ImdpSession {
  readonly id = randomBytes(6).toString('hex');
  private readonly reader: LineReader;
  private pending?: Announced;
  private messages = 0;
  private errors = 0;
  private closed = false;
  /** Between reading a command and finishing it: a shutdown waits for this. */
  private busy = false;
  /** Answers waiting for their turn, the first one's being written now; empty: everything is written as it comes. */
  private readonly turns: Turn[] = [];
  /** Deliveries going on while the next commands are read (MAX_IN_FLIGHT); each settles once answered, never rejects. */
  private readonly inFlight = new Set<Promise<void>>();
  /** Answers held back (the socket corked), to be sent by this timer at the latest. */
  private held: NodeJS.Timeout | undefined;
  /** The peer certificate's SHA-256 (hex), and the last domain it was checked against: the same for every message of a session, as a rule. */
  private fingerprint: string | undefined;
  private covered: { domain: string; yes: boolean } | undefined;
  /** The handlers' environments of this session so far, by sender domain and alignment (env()). */
  private readonly envs = new Map<string, Readonly<Record<string, string | undefined>>>();

  constructor(
    private readonly socket: TLSSocket,
    private readonly peer: Peer,
    private readonly cfg: SessionConfig,
  ) {
    const { limits, timeouts } = cfg;
    this.reader = new LineReader(
      socket,
      {
        maxLine: limits.maxLine,
        idleTimeout: timeouts.idle,
        dataTimeout: timeouts.data,
        commandTimeout: timeouts.command,
        minRate: limits.minDataRate,
      },
      () => this.inputRunsDry(),
    );
    this.reader.deadline('first', timeouts.firstMessage, `no message within ${timeouts.firstMessage / 1000} s`);
  }

  /** Answer the command being read: now, or, while a message before it is still being delivered, after that one's answers. */
  private send(s: string): void {
    const last = this.turns.at(-1);
    if (!last) return this.write(s);
    if (last.open) this.turns.push({ lines: [s], open: false });
    else last.lines.push(s);
  }

  /**
   * Write to the peer. Answers are held back (the socket corked) until
   * reading must wait for the peer or HOLD ms pass, as Postfix's smtpd
   * flushes its replies when its input runs dry: a peer that sent MAIL and
   * DATA together gets ACCEPT and the final answer in one TLS write, not
   * two, and so does a handler's REPLY line with the final answer after it.
   */
  private write(s: string): void {
    if (this.socket.destroyed || !this.socket.writable) return;
    if (!this.held) {
      this.socket.cork();
      this.held = setTimeout(() => this.release(), HOLD);
    }
    this.socket.write(s);
  }

  /** Reading must wait for the peer: what is held back goes out, unless a delivery's answer will come to join it. */
  private inputRunsDry(): void {
    if (this.inFlight.size === 0) this.release();
  }

  /** A turn for one message's answers, after every answer sent or kept so far. */
  private takeTurn(): Turn {
    const turn: Turn = { lines: [], open: true };
    this.turns.push(turn);
    return turn;
  }

  /** One of a message's answers: written if it is its turn, else kept until it is. */
  private sendIn(turn: Turn, s: string): void {
    if (this.turns[0] === turn) this.write(s);
    else turn.lines.push(s);
  }

  /** A message has answered: the answers kept behind it whose turn it now is go out. */
  private endTurn(turn: Turn): void {
    turn.open = false;
    while (this.turns.length > 0 && !this.turns[0].open) {
      this.turns.shift();
      const next = this.turns[0];
      if (next) for (const l of next.lines.splice(0)) this.write(l);
    }
  }

  /** Every delivery in flight answered. */
  private async allAnswered(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.all(this.inFlight);
  }

  /** Send what is held back. */
  private release(): void {
    if (!this.held) return;
    clearTimeout(this.held);
    this.held = undefined;
    this.socket.uncork();
  }

  private bye(text: string): void {
    this.send(wire.bye(text));
    this.closed = true;
  }

  async run(stopping: AbortSignal): Promise<void> {
    const onStop = () => {
      // Messages being delivered are answered first; a command begun meanwhile is finished by the loop, which then says BYE.
      void this.allAnswered().then(() => {
        if (this.pending || this.busy || this.closed) return;
        this.bye('server shutting down, try again later');
        this.release();
        this.socket.end();
      });
    };
    stopping.addEventListener('abort', onStop, { once: true });
    try {
      this.send(wire.greeting(this.cfg.domain));
      while (!this.closed) {
        if (stopping.aborted && !this.pending) {
          this.bye('server shutting down, try again later');
          break;
        }
        let line: string | null;
        try {
          // A peer that sends commands but reads no answers is not read from until it does.
          if (this.socket.writableLength > REPLY_BUFFER) this.release();
          await backpressure(this.socket, REPLY_BUFFER, this.cfg.timeouts.data);
          while (this.inFlight.size >= MAX_IN_FLIGHT) await Promise.race(this.inFlight);
          line = await this.reader.readLine();
        } catch (e) {
          if (e instanceof WriteError) throw new Drop(`answers not read: ${e.message}`);
          if (!(e instanceof LineError)) throw e;
          if (e.kind === 'not-utf8' || e.kind === 'control') {
            this.protocolError(e.message);
            continue;
          }
          if (e.kind !== 'eof') this.bye(e.kind === 'timeout' ? `${e.message}: closing` : e.message);
          break;
        }
        if (line === null) break;
        this.busy = true;
        await this.dispatch(wire.parseCommand(line));
        this.busy = false;
      }
    } catch (e) {
      if (!(e instanceof Drop)) throw e;
      this.cfg.log.info(`session=${this.id} ${this.peer.address}: connection ${e.sayBye ? 'closed' : 'dropped'}: ${e.message}`);
      this.release(); // what the handler said still goes out before the connection is cut
      // The BYE goes out and the listener closes the connection gently; a broken one is cut.
      if (e.sayBye) this.bye(`${e.message}: closing`);
      else this.socket.destroy();
    } finally {
      // The connection is closed only once every message read has its answer written (or the connection is gone).
      await this.allAnswered();
      this.release();
      stopping.removeEventListener('abort', onStop);
    }
  }

  private readonly verbs: Record<wire.Command['verb'], (c: wire.Command) => Promise<void>> = {
    MAIL: (c) => this.mail((c as { size: number }).size),
    DATA: () => this.data(),
    ABORT: async () => {
      if (!this.pending) return this.protocolError('ABORT without a pending MAIL');
      this.pending = undefined;
    },
    DONE: async () => {
      if (this.pending) this.pending = undefined;
      this.bye('goodbye');
    },
    bad: async (c) => {
      const bad = c as { reason: string; mail?: boolean };
      if (bad.mail) await this.readHeaderBlock();
      this.protocolError(bad.reason);
    },
  };

  private async dispatch(c: wire.Command): Promise<void> {
    await this.verbs[c.verb](c);
  }

  private protocolError(reason: string): void {
    this.errors++;
    if (this.errors > this.cfg.limits.maxErrors) return this.bye(`too many errors (${this.errors}); last: ${reason}`);
    this.send(wire.error(reason));
  }

  /** The headers entry that follows MAIL, up to the empty line; undefined if it broke a limit (already read to the end). */
  private async readHeaderBlock(): Promise<{ raw: Buffer; problem?: string }> {
    const max = this.cfg.limits.maxHeaderBytes;
    const parts: string[] = [];
    let bytes = 0;
    let problem: string | undefined;
    for (;;) {
      let line: string | null;
      try {
        line = await this.reader.readLine(max);
      } catch (e) {
        if (e instanceof LineError && (e.kind === 'not-utf8' || e.kind === 'control')) {
          problem ??= `headers: ${e.message}`;
          continue;
        }
        if (e instanceof LineError && e.kind === 'too-long' && (await this.reader.discardLine(this.cfg.limits.maxMessageSize))) {
          problem ??= `headers larger than ${max} bytes`;
          continue;
        }
        throw e instanceof LineError ? dropFor(e) : e;
      }
      if (line === null) throw new Drop('connection closed in the middle of MAIL');
      if (line === '') break;
      bytes += Buffer.byteLength(line) + 1;
      if (bytes > max) problem ??= `headers larger than ${max} bytes`;
      else parts.push(line);
    }
    return { raw: Buffer.from(parts.map((l) => `${l}\n`).join('')), problem };
  }

  private rejectNow(a: Announced, status: string, text: string): void {
    this.cfg.observe?.rejected(status);
    a.rejected = { status, text };
    this.pending = a;
    this.send(wire.reject(status, text));
  }

  private async mail(size: number): Promise<void> {
    this.reader.deadline('first', undefined);
    const { command } = this.cfg.timeouts;
    // The whole headers entry, however many lines, within one command's time.
    this.reader.deadline('mail', command, `MAIL and its headers not complete within ${command / 1000} s`);
    const block = await this.readHeaderBlock().finally(() => this.reader.deadline('mail', undefined));
    if (this.pending) return this.protocolError('MAIL while another message is pending: send DATA or ABORT first');
    const a: Announced = { size, raw: block.raw };
    const { limits } = this.cfg;
    if (this.messages >= limits.maxMessages) return this.rejectNow(a, '4.5.3', `at most ${limits.maxMessages} messages per connection: open a new one`);
    if (size > limits.maxMessageSize) return this.rejectNow(a, '5.3.4', `message of ${size} bytes is over the limit of ${limits.maxMessageSize}`);
    if (block.problem) return this.rejectNow(a, '5.6.0', block.problem);
    try {
      a.headers = parseHeaders(block.raw);
      if (!a.headers.has('message-id')) throw new MessageError('headers: missing message-id');
      if (hops(a.headers) >= limits.maxHops) return this.rejectNow(a, '5.4.6', `${hops(a.headers)} received lines: a mail loop (hop limit ${limits.maxHops})`);
      const mailer = a.headers.get('mailer');
      const from = a.headers.get('from');
      if (mailer) a.senderDomain = asciiDomain(mailer.trim());
      else if (from) a.senderDomain = parseAddress(from).asciiDomain;
      else throw new MessageError('headers: neither mailer nor from: no sender domain to check the certificate against');
      a.aligned = fromAligned(from, a.senderDomain);
    } catch (e) {
      if (e instanceof MessageError || e instanceof AddressError) return this.rejectNow(a, '5.6.0', e.message);
      throw e;
    }
    if (!this.certCovers(a.senderDomain)) {
      const which = a.headers.get('mailer') ? 'mailer' : 'from';
      return this.rejectNow(
        a,
        '5.7.1',
        `your certificate (${this.peer.cert?.subject.replace(/\n/g, ', ') ?? 'none'}) does not cover ${a.senderDomain}, the domain of ${which}`,
      );
    }
    if (this.cfg.check.length) {
      const verdict = await this.check(a);
      if (verdict) return this.rejectNow(a, verdict.status, verdict.text);
    }
    this.pending = a;
    this.send(wire.accept());
  }

  private certSha256(): string | undefined {
    return this.peer.cert && (this.fingerprint ??= fingerprint256(this.peer.cert));
  }

  private certCovers(domain: string): boolean {
    if (!this.peer.cert) return false;
    if (this.covered?.domain !== domain) this.covered = { domain, yes: certCoversDomain(this.peer.cert, domain) };
    return this.covered.yes;
  }

  /**
   * A message's handler environment. Made once per sender domain and
   * alignment in a session, not per message: spreading the server's ~40
   * variables took 7 us, twice a message with a check command (1.3% of a 4 KB
   * message's CPU in a profile). Frozen, as its runs share it.
   */
  private env(a: Announced): Readonly<Record<string, string | undefined>> {
    const aligned = a.aligned ? 'yes' : 'no';
    const key = `${aligned} ${a.senderDomain ?? ''}`;
    let env = this.envs.get(key);
    if (!env) {
      if (this.envs.size >= 16) this.envs.clear();
      env = Object.freeze({
        ...this.cfg.env,
        IMA_PEER_DOMAIN: a.senderDomain,
        IMA_PEER_CERT_SHA256: this.certSha256(),
        IMA_PEER_ADDRESS: this.peer.address,
        IMA_FROM_ALIGNED: aligned,
        IMA_SESSION_ID: this.id,
      });
      this.envs.set(key, env);
    }
    return env;
  }

  /** Run the check command on the announced headers; undefined = accept. */
  private async check(a: Announced): Promise<{ status: string; text: string } | undefined> {
    const lines: string[] = [];
    const code = await runStage({
      argv: this.cfg.check,
      inProcess: this.cfg.inProcess,
      env: this.env(a),
      cwd: this.cfg.cwd,
      input: Readable.from([a.raw]),
      onLine: (l) => {
        lines.push(l);
        this.send(wire.reply(l));
      },
      stderr: this.cfg.stderr,
      timeout: this.cfg.timeouts.handler,
    });
    const status = finalFor(code);
    if (status === 'OK') return undefined;
    if (status === 'drop') throw new Drop('check command said drop (exit 3)');
    if (status === 'TEMPFAIL') return { status: '4.3.0', text: `recipients cannot be checked now${lines.length ? `: ${lines.at(-1)}` : ''}` };
    return { status: '5.1.1', text: `recipients refused${lines.length ? `: ${lines.join('; ')}` : ''}` };
  }

  private async data(): Promise<void> {
    const a = this.pending;
    if (!a) return this.protocolError('DATA without an accepted MAIL');
    this.pending = undefined;
    const n = ++this.messages;
    if (a.rejected) {
      if (a.size > this.cfg.limits.maxMessageSize) throw new Drop('DATA after a size rejection');
      await this.finishData(this.reader.pumpData(a.size));
      this.send(wire.final(a.rejected.status.startsWith('4') ? 'TEMPFAIL' : 'FAIL', `${a.rejected.status} ${a.rejected.text}`));
      return this.logMessage(a, n, a.rejected.status.startsWith('4') ? 'TEMPFAIL' : 'FAIL', a.rejected.text);
    }
    const turn = this.takeTurn();
    const { stream, done } = this.reader.pumpData(a.size);
    let read = false;
    let delivered = false;
    const delivering = this.deliver(a, stream, n, turn).finally(() => (delivered = true));
    const settle = async () => {
      try {
        const status = await delivering;
        await this.finishData({ stream, done });
        this.answer(a, n, turn, status);
      } finally {
        // No answer (the connection broke, the handler said drop): what comes after it is not held back for it.
        if (turn.open) this.endTurn(turn);
      }
    };
    await Promise.race([done.then(() => (read = true)), delivering]).catch(() => {});
    if (!read || delivered) return settle();
    // All its data is read: the next commands are read while the handler finishes.
    const job = settle().catch((e: unknown) => this.endInFlight(e));
    this.inFlight.add(job);
    void job.finally(() => this.inFlight.delete(job));
  }

  /** A message's final answer, in its turn; a handler's drop ends the connection. */
  private answer(a: Announced, n: number, turn: Turn, status: { word: wire.Final | 'drop'; text?: string }): void {
    if (status.word === 'drop') {
      this.cfg.observe?.message('drop', a.size);
      throw new Drop('handler said drop (exit 3)');
    }
    this.sendIn(turn, wire.final(status.word, status.text));
    this.endTurn(turn);
    // A peer waiting for answers gets this one now, not after HOLD.
    if (this.reader.waiting) this.release();
    this.logMessage(a, n, status.word, status.text);
  }

  /** A delivery in flight ended the session (a handler's drop, or a failure of our own): the connection is cut, as the loop would. */
  private endInFlight(e: unknown): void {
    if (e instanceof Drop) this.cfg.log.info(`session=${this.id} ${this.peer.address}: connection dropped: ${e.message}`);
    else this.cfg.log.error(`session=${this.id} ${this.peer.address}: session failed: ${describe(e)}`);
    this.closed = true;
    this.release();
    this.socket.destroy();
  }

  /** Let the rest of the data be read (and discarded if nobody wants it); a broken transfer ends the session. */
  private async finishData(p: { stream: PassThrough; done: Promise<void> }): Promise<void> {
    p.stream.resume();
    try {
      await p.done;
    } catch (e) {
      throw dropFor(e);
    }
  }

  /** Read the message, check it, add `received`, run the handler. */
  private async deliver(a: Announced, input: PassThrough, n: number, turn: Turn): Promise<{ word: wire.Final | 'drop'; text?: string }> {
    const { maxHeaderBytes, maxEntries, maxMessageSize } = this.cfg.limits;
    const entries = readMessage(input, { maxHeaderBytes, maxEntries, maxTotalBytes: maxMessageSize, maxMetaBytes: 64 * 1024 });
    let headers: Headers;
    try {
      headers = await this.stampedHeaders(a, entries, n);
    } catch (e) {
      await entries.return(undefined).catch(() => {});
      if (e instanceof Failure) return { word: e.temporary ? 'TEMPFAIL' : 'FAIL', text: `${e.status} ${e.message}` };
      throw e;
    }
    const rewrite = rewriteFor(headers, entries);
    const code = await this.runHandler(a, rewrite.output, rewrite.stop.signal, turn);
    rewrite.output.resume();
    if (!rewrite.problem()) {
      // The handler is done; if it left data unread, stop the writer and let the rest be discarded.
      rewrite.output.destroy();
      input.resume();
    }
    await rewrite.done;
    await entries.return(undefined).catch(() => {});
    const problem = rewrite.problem();
    if (problem) return { word: problem.temporary ? 'TEMPFAIL' : 'FAIL', text: `${problem.status} ${problem.message}` };
    return { word: finalFor(code) };
  }

  /** The message's headers entry, checked against the one announced with MAIL, with our `received` line added. */
  private async stampedHeaders(a: Announced, entries: AsyncGenerator<Entry>, n: number): Promise<Headers> {
    const first = await entries.next();
    if (first.done || first.value.kind !== 'headers') throw new MessageError('message has no headers entry');
    if (!first.value.raw.equals(a.raw)) throw new MessageError('the headers entry differs from the one announced with MAIL');
    const headers = first.value.headers.clone();
    const fp = this.certSha256() ?? 'none';
    const when = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
    headers.addReceived(
      `from ${a.senderDomain} (${this.peer.address}; cert sha256 ${fp.slice(0, 16)}; from ${a.aligned ? 'aligned' : 'not aligned'}) by ${this.cfg.domain} with IMDP id ${this.id}.${n}; ${when}`,
    );
    return headers;
  }

  /** Run the handler on the rewritten message, its lines relayed to the peer as they come; its exit code. */
  private async runHandler(a: Announced, input: PassThrough, signal: AbortSignal, turn: Turn): Promise<number> {
    const started = performance.now();
    const code = await runStage({
      argv: this.cfg.handler,
      inProcess: this.cfg.inProcess,
      env: this.env(a),
      cwd: this.cfg.cwd,
      input,
      onLine: (l) => this.sendIn(turn, wire.reply(l)),
      stderr: this.cfg.stderr,
      timeout: this.cfg.timeouts.handler,
      signal,
    });
    this.cfg.observe?.handler((performance.now() - started) / 1000, finalFor(code));
    return code;
  }

  private logMessage(a: Announced, n: number, status: string, text?: string): void {
    this.cfg.observe?.message(status, a.size);
    const h = a.headers;
    const rcpts = h ? ['to', 'cc', 'bcc'].flatMap((n) => h.getAll(n)).join(', ') : '';
    this.cfg.log.info(
      `session=${this.id} msg=${n} peer=${a.senderDomain ?? '?'} address=${this.peer.address} from=<${h?.get('from') ?? ''}> to=<${rcpts}> size=${a.size} status=${status}${text ? ` (${text})` : ''}`,
    );
  }
}

/**
 * The message as the handler gets it: our headers entry, then the other
 * entries as they stream in. A bad message found on the way aborts the
 * handler (`stop`) and is kept as the problem that decides the answer.
 */
function rewriteFor(
  headers: Headers,
  entries: AsyncGenerator<Entry>,
): { output: PassThrough; stop: AbortController; done: Promise<void>; problem(): Failure | undefined } {
  const output = new PassThrough({ highWaterMark: 256 * 1024 });
  const stop = new AbortController();
  let problem: Failure | undefined;
  async function* rewritten(): AsyncGenerator<OutEntry> {
    const raw = headers.serialize();
    yield { path: 'headers', size: raw.length, open: () => raw };
    for await (const e of entries) {
      if (e.kind === 'headers') continue;
      yield { path: e.path, size: e.size, open: () => e.stream };
    }
  }
  const done = writeEntries(output, rewritten(), mtimeOf(headers)).catch((e) => {
    if (e instanceof Failure && !e.temporary) problem = e;
    else if (!(e as NodeJS.ErrnoException).code?.startsWith('ERR_STREAM')) problem = e instanceof Failure ? e : new Failure('temporary', describe(e));
    stop.abort();
    output.destroy();
  });
  return { output, stop, done, problem: () => problem };
}
