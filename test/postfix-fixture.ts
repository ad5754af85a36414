// A private Postfix for tests and benchmarks (`postfix -c DIR`): config,
// queue, data directory, log and Maildirs all inside DIR, smtpd on
// 127.0.0.1 and a high port, nothing chrooted. What the callers differ in is
// an option: virtual(8) Maildirs, smtpd's TLS (STARTTLS, or wrapper mode with
// client certificates), a relayhost, extra main.cf keys. Needs root
// (Postfix's master runs as root and drops to the postfix user); a caller
// skips with `postfixUnavailable()`'s reason when it cannot run here.
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, readdirSync, watch, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { freePort, runCommand, tempDir } from './helpers.js';
import type { CertFiles } from './pki.js';

export const POSTFIX = '/usr/sbin/postfix';
const NOBODY = 65534;
const DEADLINE = 30_000;

/** Why a private Postfix cannot run here, or undefined. */
export function postfixUnavailable(): string | undefined {
  if (!existsSync(POSTFIX)) return 'Postfix is not installed (Debian: postfix)';
  if (process.getuid?.() !== 0) return 'a private Postfix needs root (its master drops to the postfix user)';
  try {
    execFileSync('id', ['postfix'], { stdio: 'ignore' });
  } catch {
    return 'no postfix user';
  }
  return undefined;
}

export interface PostfixOptions {
  /** The instance's directory; a fresh temporary one (removed at exit) when absent. */
  dir?: string;
  /** myhostname: the name in the greeting and Received lines (mydomain follows from it). */
  hostname: string;
  /** smtpd's port; a free one when absent (and tried again if taken meanwhile). */
  port?: number;
  /** Addresses delivered by virtual(8) into the Maildir DIR/mail/DOMAIN/LOCAL/. */
  mailboxes?: string[];
  /** Recipients answered with a temporary error at RCPT time: address -> "451 4.2.1 text". */
  tempfail?: Record<string, string>;
  /** smtpd's certificate: STARTTLS offered (level may) unless `clientCa` or `wrapperMode` say more. */
  tls?: CertFiles & {
    /** Require a client certificate issued by this CA, and TLS itself (mutual TLS, as IMDP). */
    clientCa?: string;
    /** smtpd on `port` speaks TLS from the first byte (SMTPS) instead of STARTTLS. */
    wrapperMode?: boolean;
    /** A second smtpd on this port without TLS (smtp-source has none). */
    plainPort?: number;
  };
  /** Relay every message to this next hop ("[127.0.0.1]:PORT"). */
  relayhost?: string;
  /** More main.cf keys; they win over the ones above. */
  main?: Record<string, string>;
}

export interface Postfix {
  port: number;
  dir: string;
  /** Pid of master(8): its descendants are the Postfix processes. */
  masterPid(): number;
  /** The Maildir new/ of an address of `mailboxes` (where delivered messages appear). */
  maildirNew(address: string): string;
  /** The messages delivered to the address's Maildir so far, as raw text. */
  maildir(address: string): string[];
  /** Wait until the address's Maildir holds `n` messages (watching the directory, with a deadline). */
  waitFor(address: string, n: number, ms?: number): Promise<string[]>;
  /** The maillog so far. */
  log(): string;
  /** Resolve when the log matches (watching it, with a deadline). */
  logged(re: RegExp, ms?: number): Promise<void>;
  /** Stop Postfix and wait until its master is gone. */
  stop(): Promise<void>;
}

function inline(map: Record<string, string>): string {
  return `inline:{ ${Object.entries(map)
    .map(([k, v]) => `{ ${k} = ${v} }`)
    .join(', ')} }`;
}

/** main.cf's keys for the options, in the order they are written. */
function mainSettings(dir: string, o: PostfixOptions): Record<string, string> {
  const s: Record<string, string> = {
    compatibility_level: '3.6',
    queue_directory: join(dir, 'queue'),
    data_directory: join(dir, 'data'),
    maillog_file: join(dir, 'maillog'),
    maillog_file_prefixes: dir,
    mail_owner: 'postfix',
    setgid_group: 'postdrop',
    myhostname: o.hostname,
    mydestination: '',
    inet_interfaces: '127.0.0.1',
    inet_protocols: 'ipv4',
    mynetworks: '127.0.0.0/8',
    smtpd_relay_restrictions: 'permit_mynetworks, reject',
    alias_maps: '',
    alias_database: '',
    biff: 'no',
  };
  if (o.mailboxes?.length) {
    const boxes = Object.fromEntries(o.mailboxes.map((a) => [a, `${a.split('@')[1]}/${a.split('@')[0]}/`]));
    s.virtual_mailbox_domains = [...new Set(o.mailboxes.map((a) => a.split('@')[1]))].join(' ');
    s.virtual_mailbox_base = join(dir, 'mail');
    s.virtual_mailbox_maps = inline(boxes);
    s.virtual_uid_maps = s.virtual_gid_maps = `static:${NOBODY}`;
  }
  if (o.tempfail) s.smtpd_recipient_restrictions = `check_recipient_access ${inline(o.tempfail)}, reject_unauth_destination`;
  if (o.tls) {
    s.smtpd_tls_cert_file = o.tls.cert;
    s.smtpd_tls_key_file = o.tls.key;
    s.smtpd_tls_security_level = o.tls.clientCa ? 'encrypt' : 'may';
  }
  if (o.tls?.clientCa) {
    s.smtpd_tls_CAfile = o.tls.clientCa;
    s.smtpd_tls_ask_ccert = s.smtpd_tls_req_ccert = 'yes';
  }
  // The next hop is an IP literal: no DNS, as nothing here has one.
  if (o.relayhost) Object.assign(s, { relayhost: o.relayhost, smtp_host_lookup: 'native' });
  return { ...s, ...o.main };
}

/** Debian's master.cf with nothing chrooted (the chroot would need copies of /etc) and smtpd on our port(s). */
function masterCf(port: number, o: PostfixOptions): string {
  const services = [`127.0.0.1:${port} inet n - n - - smtpd`];
  if (o.tls?.wrapperMode) services.push('  -o smtpd_tls_wrappermode=yes');
  if (o.tls?.plainPort) {
    services.push(
      `127.0.0.1:${o.tls.plainPort} inet n - n - - smtpd`,
      '  -o smtpd_tls_security_level=none -o smtpd_tls_req_ccert=no -o smtpd_tls_ask_ccert=no',
    );
  }
  return readFileSync('/usr/share/postfix/master.cf.dist', 'utf8')
    .replace(/^([a-z]+ +(?:inet|unix|unix-dgram|fifo) +[-ny] +[-ny] +)y/gm, '$1n')
    .replace(/^smtp {6}inet.*$/m, services.join('\n'));
}

/** Write main.cf and master.cf into dir (the config directory of `postfix -c dir`). */
function writeConfig(dir: string, port: number, o: PostfixOptions): void {
  const settings = Object.entries(mainSettings(dir, o)).map(([k, v]) => `${k} = ${v}\n`);
  writeFileSync(join(dir, 'main.cf'), settings.join(''));
  writeFileSync(join(dir, 'master.cf'), masterCf(port, o));
}

/** Resolve once something accepts connections on the port (a deadline). */
async function listening(port: number, ms = DEADLINE): Promise<void> {
  for (const t0 = Date.now(); ;) {
    const up = await new Promise<boolean>((res) => {
      const s = net.connect(port, '127.0.0.1');
      s.on('connect', () => {
        s.destroy();
        res(true);
      });
      s.on('error', () => res(false));
      s.on('close', () => res(false));
      s.setTimeout(1000, () => s.destroy());
    });
    if (up) return;
    if (Date.now() - t0 > ms) throw new Error(`Postfix: nothing listens on 127.0.0.1:${port} after ${ms} ms`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

/** Resolve with check()'s value once it has one, looking each time something in `watched` changes (a deadline). */
function whenChanged<T>(watched: string, recursive: boolean, check: () => T | undefined, ms: number, why: () => string): Promise<T> {
  return new Promise((res, rej) => {
    const watcher = watch(watched, { recursive });
    const done = (e?: Error, value?: T) => {
      clearTimeout(timer);
      watcher.close();
      if (e) rej(e);
      else res(value as T);
    };
    const timer = setTimeout(() => done(new Error(why())), ms);
    const look = () => {
      const v = check();
      if (v !== undefined) done(undefined, v);
    };
    watcher.on('change', look);
    watcher.on('error', (e) => done(e));
    look();
  });
}

function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

export async function startPostfix(o: PostfixOptions): Promise<Postfix> {
  const dir = o.dir ?? tempDir('ima-postfix-');
  for (const d of ['queue', 'data', 'mail']) mkdirSync(join(dir, d), { recursive: true });
  chmodSync(dir, 0o755); // Postfix's daemons run as the postfix user and must reach the queue
  const id = (flag: string) => Number(execFileSync('id', [flag, 'postfix']).toString());
  chownSync(join(dir, 'data'), id('-u'), id('-g'));
  chownSync(join(dir, 'mail'), NOBODY, NOBODY);
  const log = () => (existsSync(join(dir, 'maillog')) ? readFileSync(join(dir, 'maillog'), 'utf8') : '');
  let port = 0;
  let last = '';
  for (let attempt = 0; attempt < 3 && !port; attempt++) {
    const want = o.port ?? (await freePort());
    writeConfig(dir, want, o);
    const r = await runCommand(POSTFIX, ['-c', dir, 'start']);
    // postfix(1) writes its reasons to the log, not to a non-terminal stderr.
    last = `${r.stderr}${log().slice(-1500)}`;
    if (r.code === 0) port = want;
    else await runCommand(POSTFIX, ['-c', dir, 'abort']);
    if (o.port) break; // a fixed port taken stays taken
  }
  if (!port) throw new Error(`postfix did not start: ${last}`);
  await listening(port);
  const masterPid = () => Number(readFileSync(join(dir, 'queue', 'pid', 'master.pid'), 'utf8').trim());
  const maildirNew = (address: string) => {
    const [local, domain] = address.split('@');
    return join(dir, 'mail', domain, local, 'new');
  };
  const maildir = (address: string) => {
    const d = maildirNew(address);
    return existsSync(d) ? readdirSync(d).map((f) => readFileSync(join(d, f), 'utf8')) : [];
  };
  return {
    port,
    dir,
    masterPid,
    maildirNew,
    maildir,
    log,
    waitFor: (address, n, ms = DEADLINE) =>
      whenChanged(
        join(dir, 'mail'),
        true,
        () => {
          const got = maildir(address);
          return got.length >= n ? got : undefined;
        },
        ms,
        () => `${address}: ${maildir(address).length} of ${n} messages after ${ms} ms; maillog:\n${log()}`,
      ),
    logged: (re, ms = DEADLINE) =>
      whenChanged(
        dir,
        false,
        () => (re.test(log()) ? true : undefined),
        ms,
        () => `Postfix log has no ${re} after ${ms} ms:\n${log()}`,
      ).then(() => undefined),
    async stop() {
      const pid = masterPid();
      await runCommand(POSTFIX, ['-c', dir, 'stop']);
      for (const t0 = Date.now(); alive(pid) && Date.now() - t0 < DEADLINE;) await new Promise((res) => setTimeout(res, 20));
    },
  };
}
