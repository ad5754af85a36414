// The deliverer behind run-queue: finds due messages, runs the delivery
// stage once per message and recipient domain (send-mail by default, through
// stage.ts), and keeps each recipient's state: "attempting" is written
// before the stage runs and the result after, so a crash anywhere is
// retried, never lost. Limits: so many stage runs at once, so many per
// domain; a domain whose connection failed is left alone for a while.
import { Readable, type Writable } from 'node:stream';
import { asFailure } from '../failure.js';
import type { Log } from '../log.js';
import { type Result, parseResult } from '../results.js';
import { runStage } from '../stage.js';
import { type NoticeKind, buildNotice, originalHeaders } from './notice.js';
import { type Operation, applyOperation, applyStored, concerns } from './operations.js';
import {
  type MessageState,
  type Recipient,
  type Schedule,
  applyResults,
  byArrival,
  defer,
  dueRecipients,
  expire,
  finished,
  markAttempting,
  nextDue,
  resultKey,
  unnotified,
  wantsDelayWarning,
} from './state.js';
import type { QueueStore } from './store.js';

export interface RunnerConfig {
  /** The delivery stage; each recipient is added as "--recipient ADDRESS". */
  command: readonly string[];
  noticeCommand: readonly string[];
  /** Where notices come from; empty: mailer-daemon@ the sender's domain. */
  noticeFrom: string;
  inProcess: boolean;
  stageTimeout: number;
  maxParallel: number;
  maxPerDomain: number;
  /** How long a domain is left alone after a connection failure. */
  domainDefer: number;
  /** The longest run-queue sleeps without looking at the queue. */
  pollInterval: number;
  schedule: Schedule;
}

export interface RunnerEnv {
  env: Record<string, string | undefined>;
  cwd: string;
  stderr: Writable;
  log: Log;
  now: () => number;
}

/** A message being worked on: its state in memory, its state writes in order. */
interface Work {
  state: MessageState;
  units: number;
  writes: Promise<void>;
  deleted: boolean;
}

interface Unit {
  work: Work;
  domain: string;
  recipients: Recipient[];
}

/** A reply that says the domain could not be reached at all (RFC 3463 X.4.x, or a socket error). */
const CONNECTION =
  /^4\.4\.\d\b|\b(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN)\b|connection (lost|closed|refused|timed out)/i;

export class Runner {
  private readonly works = new Map<string, Work>();
  /** Every message known, with when it is next due. */
  private readonly due = new Map<string, number>();
  private readonly suspended = new Map<string, { until: number; reply: string }>();
  private readonly waiting: Unit[] = [];
  private readonly perDomain = new Map<string, number>();
  private running = 0;
  private idleWaiters: (() => void)[] = [];
  /** Counts for the log and the tests: stage runs, notices. */
  readonly stats = { runs: 0, delivered: 0, deferred: 0, failed: 0, notices: 0 };
  stopping = false;
  /** Called when a message's units are done (the daemon looks at the queue again). */
  onSettled?: () => void;

  constructor(
    private readonly store: QueueStore,
    public config: RunnerConfig,
    private readonly e: RunnerEnv,
  ) {}

  /** Learn about new messages and forget removed ones; then start what is due. */
  async pass(): Promise<void> {
    const ids = await this.store.ids();
    const present = new Set(ids);
    for (const id of this.due.keys()) if (!present.has(id) && !this.works.has(id)) this.due.delete(id);
    const fresh: MessageState[] = [];
    for (const id of ids) {
      if (this.due.has(id) || this.works.has(id)) continue;
      const s = await this.readState(id);
      if (s) fresh.push(s);
    }
    // Messages are started in the order they become known: oldest first.
    for (const s of fresh.sort(byArrival)) this.due.set(s.id, nextDue(s));
    const now = this.e.now();
    for (const [id, t] of this.due) {
      if (this.stopping) break;
      if (t <= now && !this.works.has(id)) await this.begin(id);
    }
  }

  /** When something is next due (ms since the epoch), Infinity when nothing is. */
  nextWake(): number {
    let t = Infinity;
    for (const [id, d] of this.due) if (!this.works.has(id)) t = Math.min(t, d);
    for (const s of this.suspended.values()) t = Math.min(t, s.until);
    return t;
  }

  /** Resolves when no stage is running or waiting. */
  idle(): Promise<void> {
    if (this.works.size === 0) return Promise.resolve();
    return new Promise((res) => this.idleWaiters.push(res));
  }

  /** Apply an operator's request: to a message in work in memory, to the others' stored states. */
  async apply(op: Operation): Promise<number> {
    const now = this.e.now();
    if ('all' in op.target) this.suspended.clear();
    if ('domain' in op.target) this.suspended.delete(op.target.domain);
    if (op.verb === 'retry' && 'id' in op.target) {
      // Asked to try this message now: its domains' suspensions would only defer it again untried.
      const s = this.works.get(op.target.id)?.state ?? (await this.readState(op.target.id));
      for (const r of s?.recipients ?? []) this.suspended.delete(r.domain);
    }
    const ids = 'id' in op.target ? [op.target.id] : await this.store.ids();
    let n = 0;
    for (const [id, w] of this.works) {
      if (!ids.includes(id) || !concerns(op, w.state)) continue;
      const what = applyOperation(op, w.state, now);
      if (what === 'delete') w.deleted = true;
      else if (what === 'changed') await this.save(w);
      if (what !== 'unchanged') n++;
    }
    const stored = await applyStored(
      this.store,
      op,
      now,
      ids.filter((id) => !this.works.has(id)),
    );
    for (const id of stored) this.due.delete(id); // read again at the next pass
    return n + stored.length;
  }

  private async readState(id: string): Promise<MessageState | undefined> {
    try {
      return await this.store.readState(id);
    } catch (err) {
      this.e.log.error(`${id}: ${asFailure(err).message}; left alone`);
      return undefined;
    }
  }

  /** Start a due message: one unit per domain with recipients due. */
  private async begin(id: string): Promise<void> {
    const s = await this.readState(id);
    if (!s) return void this.due.delete(id);
    const w: Work = { state: s, units: 0, writes: Promise.resolve(), deleted: false };
    this.works.set(id, w);
    const now = this.e.now();
    expire(s, now, this.config.schedule);
    const byDomain = new Map<string, Recipient[]>();
    for (const r of dueRecipients(s, now)) byDomain.set(r.domain, [...(byDomain.get(r.domain) ?? []), r]);
    for (const [domain, recipients] of byDomain) {
      if (this.deferSuspended(s, domain, recipients, now)) continue;
      w.units++;
      this.waiting.push({ work: w, domain, recipients });
    }
    if (w.units === 0) await this.finish(w);
    else this.dispatch();
  }

  /** A domain whose connection just failed: defer its recipients (not counted as attempts) without trying. */
  private deferSuspended(s: MessageState, domain: string, recipients: Recipient[], now: number): boolean {
    const down = this.suspended.get(domain);
    if (!down || down.until <= now) return false;
    this.e.log.debug(
      `${s.id}: ${domain} suspended until ${new Date(down.until).toISOString()}: ${recipients.map((r) => r.address).join(', ')} deferred untried`,
    );
    for (const r of recipients) {
      r.last_reply = `TEMPFAIL delivery to ${domain} suspended until ${new Date(down.until).toISOString()}: ${down.reply}`;
      defer(s, r, now, down.until - now, this.config.schedule);
    }
    return true;
  }

  /** Start waiting units while the limits allow. */
  private dispatch(): void {
    for (let i = 0; i < this.waiting.length && this.running < this.config.maxParallel;) {
      const u = this.waiting[i];
      if ((this.perDomain.get(u.domain) ?? 0) >= this.config.maxPerDomain) {
        i++;
        continue;
      }
      this.waiting.splice(i, 1);
      this.running++;
      this.perDomain.set(u.domain, (this.perDomain.get(u.domain) ?? 0) + 1);
      void this.runUnit(u)
        .catch((err) => this.e.log.error(`${u.work.state.id}: ${asFailure(err).message}`))
        .finally(() => {
          this.running--;
          this.perDomain.set(u.domain, this.perDomain.get(u.domain)! - 1);
          this.dispatch();
        });
    }
  }

  private async runUnit(u: Unit): Promise<void> {
    const w = u.work;
    const s = w.state;
    try {
      if (w.deleted || s.held || this.stopping) return;
      if (this.deferSuspended(s, u.domain, u.recipients, this.e.now())) return await this.save(w);
      markAttempting(u.recipients, this.e.now());
      await this.save(w);
      const results = new Map<string, Result>();
      const argv = [...this.config.command, ...u.recipients.flatMap((r) => ['--recipient', r.address])];
      this.e.log.debug(`${s.id}: attempting ${u.recipients.map((r) => r.address).join(' ')}`);
      this.stats.runs++;
      const code = await runStage({
        argv,
        inProcess: this.config.inProcess,
        env: this.e.env,
        cwd: this.e.cwd,
        input: this.store.openMessage(s.id),
        onLine: (line) => {
          const r = parseResult(line);
          if (r) results.set(resultKey(r.address), r);
        },
        stderr: this.e.stderr,
        timeout: this.config.stageTimeout,
      });
      const now = this.e.now();
      applyResults(s, u.recipients, results, code, now, this.config.schedule);
      this.noteDomain(u, now);
      await this.save(w);
      for (const r of u.recipients) {
        if (r.state === 'delivered') this.stats.delivered++;
        else if (r.state === 'failed') this.stats.failed++;
        else this.stats.deferred++;
        this.e.log.info(`${s.id}: ${r.address}: ${r.state}${r.state === 'delivered' ? '' : ` (${r.last_reply})`}`);
      }
    } finally {
      if (--w.units === 0) await this.finish(w);
    }
  }

  /** A connection failure (every recipient deferred with a connection reply) suspends the domain. */
  private noteDomain(u: Unit, now: number): void {
    const all = u.recipients.every((r) => r.state === 'deferred' && CONNECTION.test(r.last_reply.replace(/^TEMPFAIL /, '')));
    if (!all || this.config.domainDefer <= 0) return;
    this.suspended.set(u.domain, { until: now + this.config.domainDefer, reply: u.recipients[0].last_reply.replace(/^TEMPFAIL /, '') });
  }

  /** Write the state now (after the writes before it). */
  private save(w: Work): Promise<void> {
    const next = w.writes.then(() => (w.deleted ? undefined : this.store.writeState(w.state)));
    w.writes = next.catch(() => {});
    return next;
  }

  /** A message's units are done: notices, then remove it or note when it is due again. */
  private async finish(w: Work): Promise<void> {
    const s = w.state;
    try {
      await w.writes;
      if (w.deleted) return await this.store.remove(s.id);
      const now = this.e.now();
      const failed = unnotified(s);
      if (failed.length) await this.notify(w, 'failure', failed, now);
      else if (wantsDelayWarning(s, now, this.config.schedule)) {
        await this.notify(
          w,
          'delay',
          s.recipients.filter((r) => r.state === 'deferred'),
          now,
        );
      }
      if (finished(s)) {
        await this.store.remove(s.id);
        this.due.delete(s.id);
        this.e.log.info(`${s.id}: done`);
      } else {
        // A notice that could not be handed on is retried like a delivery.
        const again = unnotified(s).length ? now + this.config.schedule.minBackoff : nextDue(s);
        this.due.set(s.id, again);
      }
    } catch (err) {
      this.e.log.error(`${s.id}: ${asFailure(err).message}`);
      this.due.set(s.id, this.e.now() + this.config.schedule.minBackoff);
    } finally {
      this.works.delete(s.id);
      this.onSettled?.();
      if (this.works.size === 0) for (const f of this.idleWaiters.splice(0)) f();
    }
  }

  /** Tell the sender; no sender (a notice itself) means nobody to tell, and that is final too. */
  private async notify(w: Work, kind: NoticeKind, recipients: Recipient[], now: number): Promise<void> {
    const s = w.state;
    const mark = () => {
      if (kind === 'failure') for (const r of recipients) r.notified = true;
      else s.warned = true;
    };
    if (!s.sender) {
      mark();
      return this.save(w);
    }
    const from = this.config.noticeFrom || `mailer-daemon@${s.sender.slice(s.sender.lastIndexOf('@') + 1)}`;
    const headers = await originalHeaders(this.store.openMessage(s.id));
    const giveUpAt = Date.parse(s.arrival) + this.config.schedule.maxLifetime;
    const notice = await buildNotice({ kind, state: s, recipients, headers, from, now, giveUpAt });
    const out: string[] = [];
    const code = await runStage({
      argv: [...this.config.noticeCommand],
      inProcess: this.config.inProcess,
      env: this.e.env,
      cwd: this.e.cwd,
      input: Readable.from([notice]),
      onLine: (l) => out.push(l),
      stderr: this.e.stderr,
      timeout: this.config.stageTimeout,
    });
    if (code !== 0) {
      this.e.log.warn(`${s.id}: the ${kind} notice to ${s.sender} was not taken (${this.config.noticeCommand[0]} exited ${code}); trying again later`);
      return;
    }
    this.stats.notices++;
    this.e.log.info(`${s.id}: ${kind} notice to ${s.sender}${out.length ? ` (${out.join('; ')})` : ''}`);
    mark();
    await this.save(w);
  }
}
