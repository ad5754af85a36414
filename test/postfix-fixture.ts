// A private Postfix for tests: its own config directory, queue and Maildirs
// in a temporary directory, smtpd on 127.0.0.1 and a free high port, the
// domain b.test delivered by virtual(8) into DIR/mail/b.test/USER/. Needs
// root (Postfix's master runs as root and drops to the postfix user); a test
// skips with `postfixUnavailable()`'s reason when it cannot run here.
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, readdirSync, watch, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, runCommand, tempDir } from './helpers.js';
import type { CertFiles } from './pki.js';

export const POSTFIX = '/usr/sbin/postfix';
const NOBODY = 65534;

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
  /** Mailboxes of b.test: local parts. */
  users: string[];
  /** Recipients answered with a temporary error at RCPT time: address -> "451 4.2.1 text". */
  tempfail?: Record<string, string>;
  /** smtpd's certificate (STARTTLS offered when given). */
  tls?: CertFiles;
  /** Extra main.cf lines. */
  extra?: string;
}

export interface Postfix {
  port: number;
  dir: string;
  /** The messages delivered to USER's Maildir so far, as raw text. */
  maildir(user: string): string[];
  /** Wait until USER's Maildir holds `n` messages (watching the directory, with a deadline). */
  waitFor(user: string, n: number, ms?: number): Promise<string[]>;
  log(): string;
  stop(): Promise<void>;
}

function inline(map: Record<string, string>): string {
  const entries = Object.entries(map);
  return entries.length ? `inline:{ ${entries.map(([k, v]) => `{ ${k} = ${v} }`).join(', ')} }` : '';
}

function mainCf(dir: string, o: PostfixOptions): string {
  const boxes = Object.fromEntries(o.users.map((u) => [`${u}@b.test`, `b.test/${u}/`]));
  const temp = o.tempfail ?? {};
  return `compatibility_level = 3.6
queue_directory = ${dir}/queue
data_directory = ${dir}/data
maillog_file = ${dir}/maillog
maillog_file_prefixes = ${dir}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.b.test
mydomain = b.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
biff = no
virtual_mailbox_domains = b.test
virtual_mailbox_base = ${dir}/mail
virtual_mailbox_maps = ${inline(boxes)}
virtual_uid_maps = static:${NOBODY}
virtual_gid_maps = static:${NOBODY}
smtpd_recipient_restrictions = ${Object.keys(temp).length ? `check_recipient_access ${inline(temp)}, ` : ''}reject_unauth_destination
smtpd_relay_restrictions =
smtpd_tls_security_level = ${o.tls ? 'may' : 'none'}
${o.tls ? `smtpd_tls_cert_file = ${o.tls.cert}\nsmtpd_tls_key_file = ${o.tls.key}\nsmtpd_tls_received_header = yes` : ''}
smtp_tls_security_level = none
${o.extra ?? ''}
`;
}

/** Debian's master.cf with smtpd on our port and nothing chrooted (the chroot would need copies of /etc). */
function masterCf(port: number): string {
  return readFileSync('/etc/postfix/master.cf', 'utf8')
    .split('\n')
    .map((line) => {
      if (/^smtp\s+inet\s/.test(line)) return `127.0.0.1:${port} inet n - n - - smtpd`;
      const m = /^(\S+\s+\S+\s+\S+\s+\S+\s+)y(\s.*)$/.exec(line);
      return m ? `${m[1]}n${m[2]}` : line;
    })
    .join('\n');
}

export async function startPostfix(o: PostfixOptions): Promise<Postfix> {
  const dir = tempDir('ima-postfix-');
  chmodSync(dir, 0o755);
  for (const d of ['queue', 'data', 'mail']) mkdirSync(join(dir, d));
  chownSync(join(dir, 'data'), Number(execFileSync('id', ['-u', 'postfix']).toString()), 0);
  chownSync(join(dir, 'mail'), NOBODY, NOBODY);
  let port = 0;
  let started = false;
  let last = '';
  for (let attempt = 0; attempt < 3 && !started; attempt++) {
    port = await freePort();
    writeFileSync(join(dir, 'main.cf'), mainCf(dir, o));
    writeFileSync(join(dir, 'master.cf'), masterCf(port));
    const r = await runCommand(POSTFIX, ['-c', dir, 'start']);
    started = r.code === 0;
    last = r.stderr;
    if (!started) await runCommand(POSTFIX, ['-c', dir, 'abort']);
  }
  if (!started) throw new Error(`postfix did not start: ${last}${readFileSync(join(dir, 'maillog'), 'utf8')}`);
  const boxDir = (user: string) => join(dir, 'mail', 'b.test', user, 'new');
  const maildir = (user: string) => {
    const d = boxDir(user);
    return existsSync(d) ? readdirSync(d).map((f) => readFileSync(join(d, f), 'utf8')) : [];
  };
  const log = () => (existsSync(join(dir, 'maillog')) ? readFileSync(join(dir, 'maillog'), 'utf8') : '');
  return {
    port,
    dir,
    maildir,
    log,
    waitFor(user, n, ms = 30_000) {
      return new Promise((res, rej) => {
        const check = () => {
          const got = maildir(user);
          if (got.length >= n) {
            done();
            res(got);
          }
        };
        const watcher = watch(join(dir, 'mail'), { recursive: true }, check);
        const timer = setTimeout(() => {
          done();
          rej(new Error(`${user}@b.test: ${maildir(user).length} of ${n} messages after ${ms} ms; maillog:\n${log()}`));
        }, ms);
        const done = () => {
          watcher.close();
          clearTimeout(timer);
        };
        check();
      });
    },
    async stop() {
      await runCommand(POSTFIX, ['-c', dir, 'stop']);
    },
  };
}
