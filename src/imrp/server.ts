// The serving side of IMRP (ima(7)): one session on a TLS connection. A
// user logs in by password (scrypt, constant-time, failures slowed and
// counted per address and per user, login-guard.ts) or by a client certificate mapped to them; then
// lists, fetches (FETCH NEW streams every new message back to back),
// marks seen and deletes, only ever inside their own mailbox.
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { parseAddress } from '../address.js';
import type { Log } from '../log.js';
import { type Folder, Mailbox } from '../mailbox.js';
import { NotPlainError } from '../mailbox/below.js';
import { type OutEntry, mtimeOf, parseHeaders, tarLength, writeEntries } from '../message/index.js';
import { LineError, LineReader } from '../net/lines.js';
import type { Peer } from '../net/listen.js';
import { fingerprint256, withinDates } from '../net/tls.js';
import { WriteError, backpressure, socketSink } from '../net/writes.js';
import { verifyPassword } from '../password.js';
import type { Attempt, LoginGuard } from '../net/login-guard.js';
import { type Command, ProtocolError, type Summary, parseCommand } from './wire.js';
import * as wire from './wire.js';

export interface UserEntry {
  mailbox: string;
  password?: string;
  certificate_sha256: readonly string[];
  certificate_name?: string;
}

export interface ImrpConfig {
  name: string;
  users: Readonly<Record<string, UserEntry>>;
  /** minDataRate: bytes per second a client must take a FETCH at (after the command timeout); 0 = none. */
  limits: { maxLine: number; maxErrors: number; minDataRate: number };
  /** ms: idle between commands, to log in, for one command line, for data to move, (the delay after a failed login is the guard's). */
  timeouts: { idle: number; login: number; command: number; data: number };
  log: Log;
  /** Failed logins per client address and per user, shared by all sessions of the server. */
  guard: LoginGuard;
  /** Checked against for an unknown user (password.ts dummyHash). */
  dummyHash: string;
  /** Told of every login attempt (metrics): result ok, failed or refused (over the failure limit). */
  onLogin?(method: 'password' | 'certificate', result: 'ok' | 'failed' | 'refused'): void;
  /** Told of every message sent by FETCH, or cut off while being sent (metrics). */
  onFetch?(result: 'sent' | 'failed', bytes: number): void;
}

class Close extends Error {}

/** Bytes of answers the client has not read yet before we stop reading its commands. */
const REPLY_BUFFER = 64 * 1024;

/** A message's line in LIST: id, folder, content size, date, sender, subject. */
async function summary(box: Mailbox, id: string, folder: Folder): Promise<Summary> {
  const path = join(box.dir, folder, id);
  const entries = await box.entries(path);
  const h = parseHeaders(await box.readEntry(path, 'headers'));
  let from = '';
  try {
    const a = parseAddress(h.get('from') ?? '');
    from = `${a.local}@${a.domain}`;
  } catch {
    // no usable from
  }
  return { id, folder, size: entries.reduce((n, e) => n + e.size, 0), date: h.get('date') ?? '', from, subject: h.get('subject') ?? '' };
}

interface Prepared {
  id: string;
  entries: OutEntry[];
  size: number;
  mtime: Date;
}

/** Bytes of a too-long line read and thrown away to find its end; past them the session ends. */
const DISCARD_LIMIT = 1024 * 1024;

/** Messages looked up ahead of the one on the wire during FETCH NEW, and at once during LIST. */
const PREPARE_AHEAD = 16;
/** A message up to this many bytes is read into memory when it is looked up. */
const PREFETCH_BYTES = 64 * 1024;

export class ImrpSession {
  readonly id = randomBytes(6).toString('hex');
  private readonly reader: LineReader;
  private user?: string;
  private view?: Mailbox;
  private errors = 0;
  private closed = false;

  constructor(
    private readonly socket: TLSSocket,
    private readonly peer: Peer,
    private readonly cfg: ImrpConfig,
  ) {
    const { idle, data, command, login } = cfg.timeouts;
    this.reader = new LineReader(socket, { maxLine: cfg.limits.maxLine, idleTimeout: idle, dataTimeout: data, commandTimeout: command });
    this.reader.deadline('login', login, `no login within ${login / 1000} s`);
  }

  private send(s: string): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(s);
  }

  private bye(text: string): void {
    this.send(wire.bye(text));
    this.closed = true;
  }

  async run(stopping: AbortSignal): Promise<void> {
    this.send(wire.greeting(this.cfg.name));
    try {
      while (!this.closed) {
        if (stopping.aborted) return this.bye('server shutting down, try again later');
        let line: string | null;
        try {
          // A client that sends commands but reads no answers is not read from until it does.
          await backpressure(this.socket, REPLY_BUFFER, this.cfg.timeouts.data);
          line = await this.reader.readLine();
        } catch (e) {
          if (e instanceof WriteError) throw new Close();
          if (!(e instanceof LineError)) throw e;
          await this.badLine(e);
          continue;
        }
        if (line === null) return;
        let cmd: Command;
        try {
          cmd = parseCommand(line);
        } catch (e) {
          if (!(e instanceof ProtocolError)) throw e;
          this.protocolError(e.message);
          continue;
        }
        await this.dispatch(cmd);
      }
    } catch (e) {
      if (!(e instanceof Close)) throw e;
      this.socket.destroy();
    }
  }

  /**
   * A line the reader refused. One too long (the rest of it read and thrown
   * away) or malformed is an error like a bad command and the session goes
   * on (ima(7) Lines); a timeout, a close, or a line with no end in sight ends it.
   */
  private async badLine(e: LineError): Promise<void> {
    if (e.kind === 'too-long') {
      try {
        if (!(await this.reader.discardLine(DISCARD_LIMIT))) return this.bye(e.message);
      } catch (d) {
        if (!(d instanceof LineError)) throw d;
        return this.bye(d.message);
      }
    }
    if (e.kind === 'too-long' || e.kind === 'not-utf8' || e.kind === 'control') return this.protocolError(e.message);
    if (e.kind === 'eof') this.closed = true;
    else this.bye(e.message);
  }

  /** ERROR, and BYE once the session has had more than max_errors of them. */
  private protocolError(reason: string): void {
    this.send(wire.error(reason));
    if (++this.errors > this.cfg.limits.maxErrors) this.bye('too many errors');
  }

  private async dispatch(c: Command): Promise<void> {
    if (c.verb === 'QUIT') return this.bye('bye');
    if (c.verb === 'LOGIN') return this.login(c.user, c.password);
    if (!this.view) return this.send(wire.no('log in first'));
    const verbs: Record<Exclude<Command['verb'], 'QUIT' | 'LOGIN'>, () => Promise<void>> = {
      FOLDERS: () => this.folders(),
      LIST: () => this.list((c as { folder: 'new' | 'cur' | 'all' }).folder),
      FETCH: () => this.fetch((c as { id: string }).id),
      SEEN: () => this.each((c as { ids: string[] }).ids, (ids) => this.view!.markSeen(ids), 'seen'),
      DELETE: () => this.each((c as { ids: string[] }).ids, (ids) => this.view!.remove(ids), 'deleted'),
    };
    await verbs[c.verb]();
  }

  /** Same answer and, near enough, the same time for an unknown user and a wrong password. */
  private async login(user: string, password?: string): Promise<void> {
    if (this.user) return this.send(wire.no(`already logged in as ${this.user}`));
    const entry = Object.hasOwn(this.cfg.users, user) ? this.cfg.users[user] : undefined;
    const addr = this.peer.address;
    const { guard } = this.cfg;
    const method = password !== undefined ? 'password' : 'certificate';
    let ok: boolean;
    let attempt: Attempt | undefined;
    if (password !== undefined) {
      // Over the limit, a password is not even tried: guesses beyond it learn nothing.
      // The try counts as failed while it is checked, so parallel guesses cannot all get past the limit.
      attempt = guard.begin(addr, user);
      ok = !!attempt && (await verifyPassword(password, entry?.password, this.cfg.dummyHash));
    } else ok = !!entry && !!this.peer.cert && this.certificateFits(entry);
    const refused = password !== undefined && !attempt;
    this.cfg.log.info(`session=${this.id} login user=${user} address=${addr} method=${method} result=${ok ? 'ok' : refused ? 'refused' : 'failed'}`);
    this.cfg.onLogin?.(method, ok ? 'ok' : refused ? 'refused' : 'failed');
    if (ok) {
      attempt?.succeeded();
      this.user = user;
      this.reader.deadline('login', undefined);
      this.view = new Mailbox(entry!.mailbox);
      return this.send(wire.ok(`logged in as ${user}`));
    }
    // A refused try is not counted again: the lock lifts after the decay however hard it is hammered.
    // A failed password was counted when it was taken; a failed certificate is counted now.
    const standing = attempt?.standing ?? (refused ? guard.standing(addr, user) : guard.fail(addr, user));
    await new Promise((r) => setTimeout(r, guard.delayFor(standing)));
    this.send(wire.no('login failed'));
    // The session ends after the BYE; the server then closes the connection gently, so the BYE arrives.
    if (guard.exhausted(standing)) this.bye('too many failed logins');
  }

  private certificateFits(entry: UserEntry): boolean {
    const cert = this.peer.cert!;
    // A pinned certificate need not chain to a CA, but its validity dates count.
    if (entry.certificate_sha256.includes(fingerprint256(cert))) return withinDates(cert);
    if (!entry.certificate_name || !this.peer.authorized) return false;
    const cn = /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1];
    return cn === entry.certificate_name;
  }

  private async folders(): Promise<void> {
    for (const f of ['new', 'cur'] as const) this.send(`FOLDER ${f} ${(await this.view!.ids(f)).length}\n`);
    this.send(wire.ok());
  }

  private async list(folder: 'new' | 'cur' | 'all'): Promise<void> {
    let n = 0;
    for (const f of folder === 'all' ? (['new', 'cur'] as const) : [folder]) {
      // Summaries are read PREPARE_AHEAD at a time and sent in order.
      const ids = await this.view!.ids(f);
      for (let i = 0; i < ids.length; i += PREPARE_AHEAD) {
        const batch = ids.slice(i, i + PREPARE_AHEAD);
        const summaries = await Promise.allSettled(batch.map((id) => summary(this.view!, id, f)));
        summaries.forEach((r, j) => {
          if (r.status === 'fulfilled') {
            this.send(wire.msgLine(r.value));
            n++;
          } else this.cfg.log.warn(`session=${this.id} user=${this.user}: ${batch[j]}: ${(r.reason as Error).message}`);
        });
      }
    }
    this.send(wire.ok(String(n)));
  }

  /**
   * Everything needed to send one message: its files, its tar size and time.
   * A small message's files are read here, so that sending it is only
   * writing buffers.
   */
  private async prepare(id: string): Promise<Prepared | { id: string; problem: string } | undefined> {
    const at = await this.view!.locate(id);
    if (!at) return undefined;
    try {
      let entries = await this.view!.entries(at.path);
      let mtime: Date;
      if (entries.reduce((n, e) => n + e.size, 0) <= PREFETCH_BYTES) {
        const data = await Promise.all(entries.map((e) => this.view!.readEntry(at.path, e.path)));
        entries = entries.map((e, i) => ({ path: e.path, size: data[i].length, open: () => data[i] }));
        mtime = mtimeOf(parseHeaders(data[0]));
      } else mtime = mtimeOf(parseHeaders(await this.view!.readEntry(at.path, 'headers')));
      return { id, entries, mtime, size: tarLength(entries, mtime) };
    } catch (e) {
      return { id, problem: (e as Error).message };
    }
  }

  private async fetch(which: string): Promise<void> {
    const ids = which === 'NEW' ? await this.view!.ids('new') : [which];
    let n = 0;
    let bytes = 0;
    // The next messages are looked up while this one is on the wire.
    const ahead: ReturnType<typeof this.prepare>[] = [];
    let looked = 0;
    const lookAhead = () => {
      while (ahead.length < PREPARE_AHEAD && looked < ids.length) ahead.push(this.prepare(ids[looked++]));
    };
    lookAhead();
    while (ahead.length) {
      const m = await ahead.shift()!;
      lookAhead();
      if (!m) {
        if (which !== 'NEW') return this.send(wire.no('no such message'));
        continue; // gone meanwhile
      }
      if ('problem' in m) {
        this.cfg.log.warn(`session=${this.id} user=${this.user}: ${m.id}: cannot be sent: ${m.problem}`);
        if (which !== 'NEW') return this.send(wire.no('message cannot be read'));
        continue;
      }
      this.send(`MESSAGE ${m.id} ${m.size}\n`);
      // Once announced, the bytes must follow exactly; a failure now ends the connection.
      try {
        const { data, command } = this.cfg.timeouts;
        const sink = socketSink(this.socket, { stall: data, minRate: this.cfg.limits.minDataRate, grace: command });
        await writeEntries(sink, m.entries, m.mtime);
      } catch (e) {
        this.cfg.log.error(`session=${this.id} user=${this.user}: ${m.id}: failed while sending: ${(e as Error).message}`);
        this.cfg.onFetch?.('failed', m.size);
        throw new Close();
      }
      n++;
      bytes += m.size;
      this.cfg.onFetch?.('sent', m.size);
    }
    this.cfg.log.info(`session=${this.id} fetch user=${this.user} messages=${n} bytes=${bytes}`);
    if (which === 'NEW') this.send(wire.ok(String(n)));
  }

  private async each(ids: string[], act: (ids: string[]) => Promise<number>, what: string): Promise<void> {
    let n: number;
    try {
      n = await act(ids);
    } catch (e) {
      // A folder that is a link (into another user's mailbox) is not followed; the operator is told which.
      if (!(e instanceof NotPlainError)) throw e;
      this.cfg.log.warn(`session=${this.id} user=${this.user}: ${what} refused: ${e.message}`);
      return this.send(wire.no('mailbox cannot be changed'));
    }
    this.cfg.log.info(`session=${this.id} user=${this.user} ${what}=${n}`);
    this.send(wire.ok(String(n)));
  }
}
