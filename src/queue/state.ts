// A queued message's state (queue(5) in run-queue(1)): who it is for, and
// where each recipient stands. Plain JSON, one file per message, rewritten
// whole and atomically; these functions are the only ones that change it.
//
//   queued      not tried yet
//   attempting  handed to the stage; a crash leaves it here, and the next
//               run tries again (IMA mailboxes dedupe by message id)
//   deferred    a temporary failure: tried again at next_attempt
//   delivered   OK: never sent again
//   failed      a permanent failure, or given up: told to the sender once
import { AddressError, addressKey, parseAddress, parseMailbox } from '../address.js';
import { type Result, isPermanent } from '../results.js';

export type RecipientState = 'queued' | 'attempting' | 'deferred' | 'delivered' | 'failed';

export interface Recipient {
  address: string;
  /** ASCII domain: what recipients are grouped and limited by. */
  domain: string;
  state: RecipientState;
  attempts: number;
  /** ISO time; empty when not yet tried. */
  last_attempt: string;
  /** ISO time the next try is due (queued and deferred). */
  next_attempt: string;
  last_reply: string;
  /** A failure has been told to the sender. */
  notified: boolean;
}

export interface MessageState {
  version: 1;
  id: string;
  /** ISO time queue-mail stored it. */
  arrival: string;
  size: number;
  /** Who notices go to; empty for a notice itself (a null sender: no notice about a notice). */
  sender: string;
  message_id: string;
  subject: string;
  /** "failure" or "delay" for a notice run-queue made, else empty. */
  notice: string;
  held: boolean;
  /** A delay warning went out. */
  warned: boolean;
  recipients: Recipient[];
}

export interface Schedule {
  /** First retry after this many ms, doubling each attempt... */
  minBackoff: number;
  /** ...up to this. */
  maxBackoff: number;
  /** Give up on a recipient this long after arrival. */
  maxLifetime: number;
  /** Warn the sender once after this long undelivered; 0: never. */
  delayWarning: number;
}

const iso = (t: number) => new Date(t).toISOString();
const time = (s: string) => (s ? Date.parse(s) : 0);

export function newState(o: {
  id: string;
  arrival: number;
  size: number;
  sender: string;
  messageId: string;
  subject: string;
  notice: string;
  recipients: string[];
}): MessageState {
  return {
    version: 1,
    id: o.id,
    arrival: iso(o.arrival),
    size: o.size,
    sender: o.sender,
    message_id: o.messageId,
    subject: o.subject,
    notice: o.notice,
    held: false,
    warned: false,
    recipients: o.recipients.map((address) => ({
      address,
      domain: parseAddress(address).asciiDomain,
      state: 'queued',
      attempts: 0,
      last_attempt: '',
      next_attempt: iso(o.arrival),
      last_reply: '',
      notified: false,
    })),
  };
}

/** Still to deliver: neither delivered nor failed. */
export const pending = (r: Recipient) => r.state === 'queued' || r.state === 'deferred' || r.state === 'attempting';

/** Recipients due at `now`. An "attempting" one found at load time was cut off by a crash: due now. */
export function dueRecipients(s: MessageState, now: number): Recipient[] {
  if (s.held) return [];
  return s.recipients.filter((r) => r.state === 'attempting' || (pending(r) && time(r.next_attempt) <= now));
}

/** The earliest time something of this message is due; Infinity when held. A message with nothing pending is due now: to notify and remove. */
export function nextDue(s: MessageState): number {
  if (s.held) return Infinity;
  if (!s.recipients.some(pending)) return 0;
  let t = Infinity;
  for (const r of s.recipients) if (pending(r)) t = Math.min(t, r.state === 'attempting' ? 0 : time(r.next_attempt));
  return t;
}

/** The wait after the n-th failed attempt: min, doubling, capped (Postfix's schedule). */
export function backoff(attempts: number, sch: Schedule): number {
  const doubled = sch.minBackoff * 2 ** Math.min(Math.max(attempts - 1, 0), 30);
  return Math.min(doubled, sch.maxBackoff);
}

export function markAttempting(rs: Recipient[], now: number): void {
  for (const r of rs) {
    r.state = 'attempting';
    r.last_attempt = iso(now);
  }
}

/**
 * What a result line's address is matched to a recipient by: queue-mail's own
 * rule (addressKey), so Bob@b.test and bob@b.test, two recipients there, stay
 * two here, while a stage writing the domain in capitals or in ASCII still
 * matches. Text that is no address is kept as is: it matches no recipient.
 */
export function resultKey(address: string): string {
  try {
    return addressKey(parseMailbox(address));
  } catch (e) {
    if (e instanceof AddressError) return address;
    throw e;
  }
}

/** Apply the stage's result lines (keyed by resultKey); a recipient without a line is a temporary failure (the stage said nothing about it). */
export function applyResults(s: MessageState, rs: Recipient[], results: Map<string, Result>, code: number, now: number, sch: Schedule): void {
  for (const r of rs) {
    const res = results.get(resultKey(r.address));
    r.attempts++;
    if (res?.word === 'OK') {
      r.state = 'delivered';
      r.last_reply = 'OK';
    } else if (res && isPermanent(res.word)) {
      r.state = 'failed';
      r.last_reply = `${res.word}${res.reason ? ` ${res.reason}` : ''}`;
    } else {
      r.last_reply = res ? `TEMPFAIL ${res.reason}` : `TEMPFAIL the delivery stage exited ${code} without a line for this recipient`;
      defer(s, r, now, backoff(r.attempts, sch), sch);
    }
  }
}

/** Defer one recipient by `wait`, or give up when that would pass its lifetime. */
export function defer(s: MessageState, r: Recipient, now: number, wait: number, sch: Schedule): void {
  if (now - time(s.arrival) >= sch.maxLifetime) {
    r.state = 'failed';
    r.last_reply = `gave up after ${r.attempts} attempts in ${Math.round((now - time(s.arrival)) / 3_600_000)} h: ${r.last_reply}`;
    return;
  }
  r.state = 'deferred';
  r.next_attempt = iso(now + wait);
}

/** Give up on every pending recipient whose lifetime has passed. */
export function expire(s: MessageState, now: number, sch: Schedule): void {
  if (now - time(s.arrival) < sch.maxLifetime) return;
  for (const r of s.recipients) if (pending(r)) defer(s, r, now, 0, sch);
}

/** Failed recipients the sender has not been told about. */
export const unnotified = (s: MessageState) => s.recipients.filter((r) => r.state === 'failed' && !r.notified);

/** Should a delay warning go out now? */
export function wantsDelayWarning(s: MessageState, now: number, sch: Schedule): boolean {
  if (!sch.delayWarning || s.warned || !s.sender) return false;
  return now - time(s.arrival) >= sch.delayWarning && s.recipients.some((r) => r.state === 'deferred');
}

/** Nothing left to do: every recipient delivered or failed, every failure told. */
export const finished = (s: MessageState) => s.recipients.every((r) => !pending(r)) && unnotified(s).length === 0;

/**
 * Oldest first. A queue id has the arrival only to the second, and random
 * hex after it, so ids of one second sort at random; the state's arrival
 * has the milliseconds. Ties (one millisecond) go by id.
 */
export function byArrival(a: MessageState, b: MessageState): number {
  return time(a.arrival) - time(b.arrival) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/** Parse and check a state file's text; throws on anything malformed. */
export function parseState(text: string): MessageState {
  const s = JSON.parse(text) as MessageState;
  if (s?.version !== 1 || typeof s.id !== 'string' || !Array.isArray(s.recipients)) throw new Error('not a queue state (version 1)');
  for (const r of s.recipients) if (typeof r.address !== 'string' || typeof r.state !== 'string') throw new Error('bad recipient entry');
  return s;
}

export const serializeState = (s: MessageState) => `${JSON.stringify(s, null, 2)}\n`;
