// smtp-server's hooks for one listener: who may connect, log in, send from
// and to which address, and what happens to each message (receive-message.ts).
// Settings are read through a function at each event, so a SIGHUP reload
// applies to the next command of every session.
import { Readable } from 'node:stream';
import type { SMTPServerAddress, SMTPServerAuthentication, SMTPServerDataStream, SMTPServerOptions, SMTPServerSession } from 'smtp-server';
import { type Address, AddressError, mailboxOf, parseMailbox } from '../address.js';
import { EXIT } from '../failure.js';
import { type Log, logValue } from '../log.js';
import { parseResult } from '../results.js';
import { runStage } from '../stage.js';
import { type User, checkLogin, senderAllowed } from './receive-auth.js';
import { type GuardLimits, LoginGuard } from '../net/login-guard.js';
import { dummyHash } from '../password.js';
import { type MessageSettings, receiveMessage } from './receive-message.js';
import { PerAddress, reply } from './receive-server.js';

export interface SessionSettings extends MessageSettings {
  maxRecipients: number;
  maxPerAddress: number;
  /** Who RCPT TO:<Postmaster>, without a domain, reaches (RFC 5321 4.5.1: it must be taken). */
  postmaster: string;
  /** mx: the RCPT check command (the address is appended): exit 0 exists, 1 does not, else try later. */
  check: readonly string[];
  users: ReadonlyMap<string, User>;
  maxLoginFailures: number;
  /** ms each failed login so far adds before the answer. */
  loginDelay: number;
  /** ms for a failure count to go down by one (login-guard.ts). */
  loginFailureDecay: number;
}

interface SessionState {
  messages: number;
  env?: { base: object; user?: string; value: Readonly<Record<string, string | undefined>> };
}

type Hooks = Required<Pick<SMTPServerOptions, 'onConnect' | 'onSecure' | 'onAuth' | 'onMailFrom' | 'onRcptTo' | 'onData' | 'onClose'>>;

function guardLimits(s: SessionSettings): GuardLimits {
  return { maxFailures: s.maxLoginFailures, decay: s.loginFailureDecay, delay: s.loginDelay, maxEntries: 10_000 };
}

// The MAIL and RCPT parameters of the extensions the EHLO reply names (SIZE,
// 8BITMIME, SMTPUTF8; AUTH= where AUTH is offered, RFC 4954 5). Any other is
// refused (RFC 5321 4.1.1.11) rather than taken silently: NOTIFY=NEVER
// asked for a DSN behaviour nobody here gives.
const MAIL_PARAMETERS: ReadonlySet<string> = new Set(['SIZE', 'BODY', 'SMTPUTF8']);
const SUBMISSION_MAIL_PARAMETERS: ReadonlySet<string> = new Set([...MAIL_PARAMETERS, 'AUTH']);
const RCPT_PARAMETERS: ReadonlySet<string> = new Set();

/** The first parameter of a MAIL or RCPT command not among `known`. */
function unknownParameter(address: SMTPServerAddress, known: ReadonlySet<string>): string | undefined {
  const args = (address as { args?: unknown }).args;
  return Object.keys(args && typeof args === 'object' ? args : {}).find((k) => !known.has(k.toUpperCase()));
}

/** Shared state of all sessions of one server. */
export class Sessions {
  readonly perAddress = new PerAddress();
  /** Failed logins per address and per user, shared with nothing else (login-guard.ts, as post-office). */
  readonly guard: LoginGuard;
  /** Checked against for an unknown user: the configured users' scrypt parameters (password.ts). */
  private dummy: { users: ReadonlyMap<string, User>; hash: string } | undefined;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly counted = new Set<string>();
  /** What each open session has had so far: its messages, and its handlers' environment (handlerEnv). */
  private readonly sessions = new Map<string, SessionState>();

  constructor(
    private readonly settings: () => SessionSettings,
    private readonly log: Log,
  ) {
    this.guard = new LoginGuard(guardLimits(settings()));
  }

  /** Resolves when every message taken so far is answered. */
  async drained(): Promise<void> {
    while (this.inFlight.size) await Promise.all([...this.inFlight]);
  }

  hooks(): Hooks {
    return {
      onConnect: (session, cb) => this.connect(session, cb),
      onClose: (session) => this.close(session),
      onSecure: (_socket, session, cb) => {
        // Submission: AUTH, now that the session is encrypted. Never on mx
        // (port 25): no sender rules there, and no password to guess at.
        if (this.settings().role === 'submission') session.disabledCommands = [];
        cb();
      },
      onAuth: (auth, session, cb) => void this.auth(auth, session, cb),
      onMailFrom: (address, session, cb) => this.mailFrom(address, session, cb),
      onRcptTo: (address, session, cb) => void this.rcptTo(address, session, cb),
      onData: (stream, session, cb) => this.data(stream, session, cb),
    };
  }

  private connect(session: SMTPServerSession, cb: (e?: Error) => void): void {
    this.counted.add(session.id);
    if (!this.perAddress.enter(session.remoteAddress, this.settings().maxPerAddress)) {
      this.log.info(`session=${session.id} client=${session.remoteAddress}: refused: too many connections from this address`);
      return cb(reply(421, '4.7.0', 'too many connections from your address; try again later'));
    }
    // RFC 4954 section 4: no AUTH offered (nor taken) before TLS.
    if (this.settings().role === 'submission' && !session.secure) session.disabledCommands = ['AUTH'];
    cb();
  }

  private dummyFor(users: ReadonlyMap<string, User>): string {
    if (this.dummy?.users !== users) this.dummy = { users, hash: dummyHash([...users.values()].map((u) => u.password)) };
    return this.dummy.hash;
  }

  private close(session: SMTPServerSession): void {
    if (this.counted.delete(session.id)) this.perAddress.leave(session.remoteAddress);
    this.sessions.delete(session.id);
  }

  /**
   * The handler environment of a session's messages, made at its first one
   * and again after a reload or a login: spreading the server's ~40
   * variables per message took 7 us. Frozen, as its runs share it.
   */
  private handlerEnv(session: SMTPServerSession, s: SessionSettings, user: string | undefined): Readonly<Record<string, string | undefined>> {
    const state = this.stateOf(session);
    const made = state.env;
    if (made && made.base === s.env && made.user === user) return made.value;
    const value = Object.freeze({ ...s.env, IMA_SESSION_ID: session.id, IMA_PEER_ADDRESS: session.remoteAddress, IMA_SMTP_USER: user });
    state.env = { base: s.env, user, value };
    return value;
  }

  private stateOf(session: SMTPServerSession): SessionState {
    let state = this.sessions.get(session.id);
    if (!state) this.sessions.set(session.id, (state = { messages: 0 }));
    return state;
  }

  private async auth(
    auth: SMTPServerAuthentication,
    session: SMTPServerSession,
    cb: (e: Error | null | undefined, r?: { user?: string }) => void,
  ): Promise<void> {
    const s = this.settings();
    this.guard.setLimits(guardLimits(s)); // SIGHUP may have changed them; the counts stay
    const addr = session.remoteAddress;
    const user = auth.username ?? '';
    // Counted as failed while the password is checked, so parallel guesses cannot all get past the limit.
    const attempt = this.guard.begin(addr, user);
    if (!attempt) {
      this.log.info(`session=${session.id} client=${addr} login user=${logValue(user)} refused: too many failed logins`);
      return cb(reply(421, '4.7.0', 'too many failed logins; try again later'));
    }
    const ok = await checkLogin(s.users, user, auth.password ?? '', this.dummyFor(s.users));
    this.log.info(`session=${session.id} client=${addr} login user=${logValue(user)} method=${auth.method} result=${ok ? 'ok' : 'failed'}`);
    // A success takes back only its own try: a login to one's own account must not wipe the count of guesses at another.
    if (ok) {
      attempt.succeeded();
      return cb(null, { user });
    }
    await new Promise((r) => setTimeout(r, this.guard.delayFor(attempt.standing)));
    cb(reply(535, '5.7.8', 'authentication failed'));
  }

  private mailFrom(address: SMTPServerAddress, session: SMTPServerSession, cb: (e?: Error) => void): void {
    const s = this.settings();
    const unknown = unknownParameter(address, s.role === 'submission' ? SUBMISSION_MAIL_PARAMETERS : MAIL_PARAMETERS);
    if (unknown) return cb(reply(555, '5.5.4', `${unknown}: parameter not supported`));
    if (s.role !== 'submission') return cb();
    if (!session.user) return cb(reply(530, '5.7.0', session.secure ? 'authentication required' : 'authentication required: STARTTLS first, then AUTH'));
    const user = String(session.user);
    const rules = s.users.get(user)?.senders ?? [];
    let allowed = false;
    try {
      allowed = address.address !== '' && senderAllowed(rules, parseMailbox(address.address));
    } catch (e) {
      if (!(e instanceof AddressError)) throw e;
      return cb(reply(553, '5.1.7', `bad sender address: ${e.message}`));
    }
    if (allowed) return cb();
    this.log.info(`session=${session.id} user=${user}: sender <${address.address}> refused by submission.users.${user}.senders`);
    cb(reply(550, '5.7.1', `user ${user} may not send as <${address.address}> (rule submission.users.${user}.senders = ${rules.join(', ') || 'none'})`));
  }

  private async rcptTo(address: SMTPServerAddress, session: SMTPServerSession, cb: (e?: Error) => void): Promise<void> {
    const s = this.settings();
    const unknown = unknownParameter(address, RCPT_PARAMETERS);
    if (unknown) return cb(reply(555, '5.5.4', `${unknown}: parameter not supported`));
    if (session.envelope.rcptTo.length >= s.maxRecipients) return cb(reply(452, '4.5.3', `too many recipients (at most ${s.maxRecipients} per message)`));
    // smtp-server puts this very object in the envelope once answered: the recipient is the postmaster's address from here on.
    if (/^postmaster$/i.test(address.address)) address.address = s.postmaster;
    let rcpt: string;
    try {
      rcpt = mailboxOf(parseMailbox(address.address));
    } catch (e) {
      if (!(e instanceof AddressError)) throw e;
      return cb(reply(553, '5.1.3', `bad recipient address: ${e.message}`));
    }
    if (s.role === 'submission' || !s.check.length) return cb();
    cb(await this.check(rcpt, s));
  }

  /** The RCPT check: the handler's --check, in-process by default. */
  private async check(rcpt: string, s: SessionSettings): Promise<Error | undefined> {
    const lines: string[] = [];
    const code = await runStage({
      argv: [...s.check, rcpt],
      inProcess: s.inProcess,
      env: s.env,
      cwd: s.cwd,
      input: Readable.from([]),
      onLine: (l) => lines.push(l),
      stderr: s.stderr,
      timeout: s.handlerTimeout,
    });
    const said = lines.map(parseResult).find((r) => r !== undefined);
    if (code === EXIT.OK) return undefined;
    if (code === EXIT.FAIL && !said) return reply(550, '5.7.1', `relaying denied: ${rcpt} is not in a domain we receive mail for`);
    if (code === EXIT.FAIL && said?.word === 'NORECIPIENT') return reply(550, '5.1.1', `${rcpt}: no such recipient`);
    if (code === EXIT.FAIL) return reply(550, /^5\.\d+\.\d+$/.test(said!.reason.split(' ')[0]) ? said!.reason.split(' ')[0] : '5.1.1', `${rcpt}: refused`);
    return reply(451, '4.3.0', `${rcpt} cannot be checked now; try again later`);
  }

  private data(stream: SMTPServerDataStream, session: SMTPServerSession, cb: (e?: Error | null, message?: string) => void): void {
    const s = this.settings();
    const n = ++this.stateOf(session).messages;
    const tls =
      session.secure && session.tlsOptions ? `${(session.tlsOptions as { version?: string }).version ?? ''} ${session.tlsOptions.name}`.trim() : undefined;
    const user = session.user ? String(session.user) : undefined;
    const client = {
      sessionId: session.id,
      ip: session.remoteAddress,
      helo: session.hostNameAppearsAs || '',
      esmtp: session.openingCommand !== 'HELO',
      tls,
      user,
      env: this.handlerEnv(session, s, user),
    };
    const envelope = { from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '', to: session.envelope.rcptTo.map((r) => r.address) };
    const rules = user ? (s.users.get(user)?.senders ?? []) : [];
    const fromProblem = (a: Address) =>
      senderAllowed(rules, a)
        ? undefined
        : `user ${user} may not send as From: ${mailboxOf(a)} (rule submission.users.${user}.senders = ${rules.join(', ') || 'none'})`;
    const perMessage = s.role === 'submission' ? { ...s, fromProblem } : s;
    const settled = receiveMessage(stream, client, envelope, perMessage, n).then((o) => {
      const result = `${o.code} ${o.text}`;
      this.log.info(
        `session=${session.id} msg=${n} client=${client.ip} user=${user ?? '-'} from=<${envelope.from}> to=<${envelope.to.join(',')}> size=${o.size} id=${o.messageId ?? '-'}${o.verdicts ? ` ${o.verdicts}` : ''} result=${result}`,
      );
      if (o.failed.length) this.log.warn(`session=${session.id} msg=${n}: not delivered to ${o.failed.join('; ')}${o.notice ? `; notice ${o.notice}` : ''}`);
      if (o.code === 250) cb(null, o.text);
      else cb(reply(o.code, o.text.slice(0, o.text.indexOf(' ')), o.text.slice(o.text.indexOf(' ') + 1)));
    });
    this.inFlight.add(settled);
    void settled.finally(() => this.inFlight.delete(settled));
  }
}
