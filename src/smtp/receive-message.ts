// One message of an SMTP session, from the DATA stream to the reply: the
// stream checked for bare LFs and counted against the size limit as it
// comes, fed at once to the MIME -> IMA conversion (spooled, memory flat)
// and, for the mx role, to the SPF/DKIM/DMARC checks; `received` and
// `authentication-results` added; the handler run with the envelope
// recipients (never the header ones) and its exit code turned into the reply.
import { PassThrough, type Readable, type Writable } from 'node:stream';
import type { DNSResolver } from 'mailauth';
import { type Address, AddressError, addressKey, formatAddressList, mailboxProblem, parseAddress, parseAddressList } from '../address.js';
import { EXIT, Failure, asFailure, permFail, tempFail } from '../failure.js';
import type { Log } from '../log.js';
import { type Headers, type MessageParts, writeMessage } from '../message/index.js';
import { mapAddresses } from '../mime/headers.js';
import { type ConvertedMessage, MIME_LIMITS, readMime } from '../mime/to-ima.js';
import { type Result, isPermanent, parseResult } from '../results.js';
import { runStage } from '../stage.js';
import { DataTap } from './receive-data.js';
import { type NoticeSettings, sendFailureNotice } from './receive-notice.js';
import { SmtpReply } from './receive-server.js';
import { verdicts } from './receive-verdicts.js';

export interface Client {
  sessionId: string;
  ip: string;
  helo: string;
  /** The client greeted with EHLO (ESMTP), not HELO (SMTP): the received line's protocol says which (RFC 3848). */
  esmtp: boolean;
  /** "TLSv1.3 TLS_AES_256_GCM_SHA384", when the session is encrypted. */
  tls?: string;
  /** The authenticated user (submission). */
  user?: string;
  /** The handler's environment: the server's, with this session's IMA_SESSION_ID, IMA_PEER_ADDRESS and IMA_SMTP_USER. */
  env: Readonly<Record<string, string | undefined>>;
}

export interface Envelope {
  from: string;
  to: string[];
}

export interface MessageSettings {
  role: 'mx' | 'submission';
  hostname: string;
  maxMessageBytes: number;
  maxHeaderBytes: number;
  spoolDir?: string;
  /** The command the message goes to; with `envelopeFlag`, each envelope recipient is appended after it. */
  command: readonly string[];
  envelopeFlag: string;
  inProcess: boolean;
  handlerTimeout: number;
  env: Record<string, string | undefined>;
  cwd: string;
  stderr: Writable;
  log: Log;
  /** mx: SPF/DKIM/DMARC through this resolver; refuse DMARC p=reject failures when enforce. */
  verdicts?: { resolver: DNSResolver; enforceDmarcReject: boolean };
  /** submission: a problem with the From: address (the user's sender rules), or undefined. */
  fromProblem?(from: Address): string | undefined;
  /** Where the notice of recipients that failed for good goes (handler exit 2); undefined: they are only logged. */
  notice?: NoticeSettings;
}

export interface Outcome {
  code: number;
  /** The reply text, led by its enhanced status code. */
  text: string;
  messageId?: string;
  size: number;
  /** Recipients the handler did not deliver to, with reasons (exit 2). */
  failed: string[];
  /** What became of their notice, for the log. */
  notice?: string;
  verdicts?: string;
}

/** The reply for a failure: temporary 451, size 552, the rest 550 (RFC 3463 code from the failure). */
export function replyOf(f: Failure): { code: number; text: string } {
  if (f.temporary) return { code: 451, text: `${f.status.startsWith('4') ? f.status : '4.3.0'} ${f.message}` };
  const status = f.status.startsWith('5') && f.status !== '5.0.0' ? f.status : f.kind === 'data' ? '5.6.0' : '5.0.0';
  return { code: status === '5.3.4' ? 552 : 550, text: `${status} ${f.message}` };
}

const when = () => new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');

function receivedLine(c: Client, s: MessageSettings, n: number): string {
  const proto = c.esmtp ? `ESMTP${c.tls ? 'S' : ''}${c.user ? 'A' : ''}` : 'SMTP';
  // The client's own words: only what a domain or an address literal holds,
  // so that "HELO x;evil)by(fake.test" can end no clause nor the field early.
  const helo = c.helo.replace(/[^A-Za-z0-9.:_[\]-]/g, '?').slice(0, 255) || 'unknown';
  return `from ${helo} (${c.ip}) by ${s.hostname} with ${proto}${c.tls ? ` (${c.tls})` : ''} id ${c.sessionId}.${n}${c.user ? ` user ${c.user}` : ''}; ${when()}`;
}

const keysOf = (list: Address[]) => new Set(list.map(addressKey));

/** submission with a command that reads the header recipients: make them say what the envelope says. */
function envelopeIntoHeaders(m: ConvertedMessage, envelope: string[]): void {
  const h = m.headers;
  const inHeaders = ['to', 'cc', 'bcc'].flatMap((f) => h.getAll(f).flatMap((v) => parseAddressList(v)));
  const wanted = keysOf(envelope.map((r) => parseAddress(r)));
  const extra = inHeaders.filter((a) => !wanted.has(addressKey(a)));
  if (extra.length) throw permFail(`the headers name recipients the envelope (RCPT TO) does not: ${formatAddressList(extra)}`, '5.7.1');
  const known = keysOf(inHeaders);
  const hidden = envelope.map((r) => parseAddress(r)).filter((a) => !known.has(addressKey(a)));
  if (hidden.length) h.set('bcc', formatAddressList([...h.getAll('bcc').flatMap((v) => parseAddressList(v)), ...hidden]));
}

type Verdicts = Awaited<ReturnType<typeof verdicts>>;

/** Read the DATA stream into a converted message, with verdicts for mx. Throws Failures. */
async function take(data: DataTap, c: Client, env: Envelope, s: MessageSettings): Promise<{ m: ConvertedMessage; v?: Verdicts }> {
  const mimeIn = new PassThrough({ highWaterMark: 256 * 1024 });
  const authIn = s.verdicts ? new PassThrough({ highWaterMark: 256 * 1024 }) : undefined;
  const asked = { ip: c.ip, helo: c.helo, sender: env.from, hostname: s.hostname };
  const feeding = data.into(authIn ? [mimeIn, authIn] : [mimeIn]);
  const checking = s.verdicts ? verdicts(authIn!, { ...asked, resolver: s.verdicts.resolver }) : undefined;
  checking?.catch(() => authIn!.destroy());
  // Many sessions convert at once: each keeps at most 256 KB of parts in memory, the rest spooled to a
  // file (with 1 MB each, 10 sessions of 1 MB messages peaked at 166-199 MB RSS; with 256 KB, 153-163).
  const limits = { ...MIME_LIMITS, maxMessageBytes: Infinity, maxHeaderBytes: s.maxHeaderBytes };
  const converting = readMime(mimeIn, { limits, spoolDir: s.spoolDir, spoolMemory: 256 * 1024 });
  const [fed, m, v] = await Promise.allSettled([feeding, converting, checking]);
  const problem = fed.status === 'rejected' ? fed.reason : m.status === 'rejected' ? m.reason : v.status === 'rejected' ? v.reason : undefined;
  if (problem) {
    if (m.status === 'fulfilled') await m.value.dispose();
    throw asFailure(problem, 'receiving the message');
  }
  return { m: (m as PromiseFulfilledResult<ConvertedMessage>).value, v: (v as PromiseFulfilledResult<Verdicts | undefined>).value };
}

/** Run the command on the message; resolve with its exit code and its result lines. */
async function hand(m: MessageParts, argv: string[], s: MessageSettings, c: Client): Promise<{ code: number; lines: string[] }> {
  const toCmd = new PassThrough({ highWaterMark: 256 * 1024 });
  const stop = new AbortController();
  const writing = writeMessage(toCmd, m).catch((e: unknown) => {
    if (!toCmd.destroyed) stop.abort(e);
  });
  const lines: string[] = [];
  const code = await runStage({
    argv,
    inProcess: s.inProcess,
    env: c.env,
    cwd: s.cwd,
    input: toCmd,
    onLine: (l) => {
      if (lines.length < 1000) lines.push(l);
    },
    stderr: s.stderr,
    timeout: s.handlerTimeout,
    signal: stop.signal,
  });
  toCmd.destroy(); // a command that exits without reading everything
  await writing;
  return { code, lines };
}

/** The reply for the handler's exit code (DESIGN.md 2): 0 and 2 accepted, 1 refused, 3 drop, anything else 451. */
function replyForExit(code: number, lines: string[], id: string): { code: number; text: string; failed: string[] } {
  const results = lines.map(parseResult).filter((r) => r !== undefined);
  const failed = results.filter((r) => r.word !== 'OK').map((r) => `${r.address} ${r.word}${r.reason ? ` ${r.reason}` : ''}`);
  const reason = (word: string, fallback: string) => {
    const r = results.find((x) => x.word === word || (word === 'FAIL' && x.word === 'NORECIPIENT'));
    if (!r) return fallback;
    if (r.word === 'NORECIPIENT') return `5.1.1 ${r.address}: no such recipient`;
    // The handler's enhanced code only when its class is the reply's (RFC 3463: "550 4.2.2" says two things at once).
    const ownCode = new RegExp(`^${fallback[0]}\\.\\d{1,3}\\.\\d{1,3} `);
    return ownCode.test(r.reason) ? r.reason : `${fallback.slice(0, 5)} ${r.address}: ${r.reason || r.word}`;
  };
  if (code === EXIT.OK || code === EXIT.PARTIAL) return { code: 250, text: `2.0.0 accepted as ${id}`, failed };
  if (code === EXIT.FAIL) return { code: 550, text: reason('FAIL', '5.0.0 the message was refused'), failed };
  if (code === EXIT.DROP) return { code: 421, text: '4.7.0 closing the connection', failed };
  return { code: 451, text: reason('TEMPFAIL', `4.3.0 the message cannot be delivered now (handler exit ${code}); try again later`), failed };
}

/**
 * Exit 2: the reply may be 250 only once every recipient not stored has
 * failed for good and the sender has been told (or there is nobody to
 * tell). A recipient that may still be delivered (TEMPFAIL), or failures
 * the handler did not name, make it 451: the sender tries again, and what
 * was stored is not stored twice. Resolves with what became of the notice.
 */
async function settlePartial(lines: string[], m: ConvertedMessage, env: Envelope, s: MessageSettings, c: Client, n: number): Promise<string> {
  const results = lines.map(parseResult).filter((r): r is Result => r !== undefined);
  const failed = results.filter((r) => isPermanent(r.word));
  if (results.some((r) => r.word === 'TEMPFAIL'))
    throw tempFail('delivered to some recipients, not yet to all; try again later (what was stored is not stored twice)', '4.3.0');
  if (!failed.length) throw tempFail('the handler delivered to some recipients without saying which failed; try again later', '4.3.0');
  if (!env.from) return 'none (null sender)';
  // RFC 5321 takes senders IMA has no form for (a|b@x, -x@x, x@[192.0.2.1]):
  // no notice can be addressed to them, so, as for <>, there is nobody to tell.
  const unanswerable = mailboxProblem(env.from);
  if (unanswerable) return `none (the sender <${env.from}> is no IMA address: ${unanswerable})`;
  if (!s.notice) return 'none (notice_command is empty)';
  const run = { inProcess: s.inProcess, timeout: s.handlerTimeout, env: s.env, cwd: s.cwd, stderr: s.stderr };
  const said = await sendFailureNotice(s.notice, run, {
    headers: m.headers,
    sender: env.from,
    received: `${when()} by ${s.hostname} (id ${c.sessionId}.${n})`,
    failed,
  });
  return `to <${env.from}>${said ? ` as ${said}` : ''}`;
}

/**
 * What is wrong with the authors a message names, for the sender rules.
 * IMA's from holds the first From: mailbox only; mime-to-ima keeps the whole
 * original list beside it (mime-from) and a second From: field as a
 * mime-header line, and ima-to-mime writes both out again: so "From:
 * alice@b.test, boss@evil.test" passed as alice and went out naming boss.
 * Every mailbox must pass; a list that is not all plain addresses (a group)
 * cannot be checked, and a second From: field is refused.
 */
function authorsProblem(h: Headers, problemOf: (a: Address) => string | undefined): string | undefined {
  if (h.getAll('mime-header').some((line) => /^from\s*:/i.test(line))) return 'more than one From: header';
  const original = h.get('mime-from');
  if (original !== undefined) {
    const { list, whole } = mapAddresses(original);
    if (!whole) return `From: ${original}: only plain addresses can be checked against the sender rules`;
    return list.map(problemOf).find((p) => p !== undefined);
  }
  const from = h.get('from');
  return from ? problemOf(parseAddress(from)) : 'the message has no From: header';
}

/** The id the command printed (a queue id): its first stdout line that is not a result line. */
function printedId(lines: string[]): string | undefined {
  const l = lines.find((x) => !parseResult(x) && /^\S{1,200}$/.test(x.trim()));
  return l?.trim();
}

/** Take one message and answer for it. Never throws: every failure is a reply. */
export async function receiveMessage(stream: Readable, c: Client, env: Envelope, s: MessageSettings, n: number): Promise<Outcome> {
  const data = new DataTap(stream, s.maxMessageBytes);
  let m: ConvertedMessage | undefined;
  let summary: string | undefined;
  try {
    const got = await take(data, c, env, s);
    m = got.m;
    summary = got.v?.summary;
    if (got.v?.dmarcReject && s.verdicts?.enforceDmarcReject)
      throw permFail(`DMARC policy of the From: domain is reject, and the message failed it (${summary})`, '5.7.1');
    m.headers.addReceived(receivedLine(c, s, n));
    if (got.v) m.headers.add('authentication-results', got.v.header);
    if (s.fromProblem) {
      const problem = authorsProblem(m.headers, s.fromProblem);
      if (problem) throw permFail(problem, '5.7.1');
    }
    if (s.role === 'submission' && !s.envelopeFlag) envelopeIntoHeaders(m, env.to);
    const id = m.headers.get('message-id') ?? '-';
    const argv = [...s.command, ...(s.envelopeFlag ? env.to.flatMap((r) => [s.envelopeFlag, r]) : [])];
    const ran = await hand(m, argv, s, c);
    const notice = ran.code === EXIT.PARTIAL ? await settlePartial(ran.lines, m, env, s, c, n) : undefined;
    const r = replyForExit(ran.code, ran.lines, s.role === 'submission' ? (printedId(ran.lines) ?? id) : id);
    return { ...r, notice, messageId: id, size: data.bytes, verdicts: summary };
  } catch (e) {
    if (!stream.readableEnded) stream.resume();
    const f = e instanceof AddressError ? permFail(e.message, '5.6.0') : e instanceof SmtpReply ? permFail(e.message) : asFailure(e);
    return { ...replyOf(f), messageId: m?.headers.get('message-id'), size: data.bytes, failed: [], verdicts: summary };
  } finally {
    await m?.dispose();
  }
}
