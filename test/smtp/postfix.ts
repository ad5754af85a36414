// A private Postfix instance for tests and benchmarks (`postfix -c DIR`):
// its own queue, data directory and log inside DIR, smtpd on a loopback
// port, no chroot. Needs root (Postfix's master) and the postfix package;
// startPostfix says why when it cannot run, and the caller skips.
import { execFile } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, watch, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

import { freePort } from '../helpers.js';

const MASTER = `SMTPD inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`;

export interface Postfix {
  port: number;
  dir: string;
  maillog(): string;
  /** Resolve when the log matches (fs.watch on it, with a deadline). */
  logged(re: RegExp, ms?: number): Promise<void>;
  stop(): Promise<void>;
}

/** Why Postfix cannot run here, or undefined. */
export function postfixMissing(): string | undefined {
  if (!existsSync('/usr/sbin/postfix')) return 'postfix is not installed (apt-get install postfix)';
  if (process.getuid?.() !== 0) return 'a private Postfix needs root (its master process)';
  return undefined;
}

/** Start Postfix in dir with smtpd on a free loopback port; `main` adds main.cf lines. */
export async function startPostfix(dir: string, main: Record<string, string>): Promise<Postfix> {
  const etc = join(dir, 'etc');
  for (const d of [etc, join(dir, 'queue'), join(dir, 'data')]) mkdirSync(d, { recursive: true });
  chmodSync(dir, 0o755); // Postfix's daemons run as the postfix user and must reach the queue
  const pw = readFileSync('/etc/passwd', 'utf8').match(/^postfix:[^:]*:(\d+):(\d+):/m);
  if (pw) chownSync(join(dir, 'data'), Number(pw[1]), Number(pw[2]));
  const port = await freePort();
  const settings: Record<string, string> = {
    compatibility_level: '3.6',
    queue_directory: join(dir, 'queue'),
    data_directory: join(dir, 'data'),
    maillog_file_prefixes: dir,
    maillog_file: join(dir, 'maillog'),
    inet_interfaces: '127.0.0.1',
    inet_protocols: 'ipv4',
    myhostname: 'relay.a.test',
    mydomain: 'a.test',
    mydestination: '',
    mynetworks: '127.0.0.0/8',
    smtpd_relay_restrictions: 'permit_mynetworks, reject',
    alias_maps: '',
    alias_database: '',
    smtp_host_lookup: 'native',
    ...main,
  };
  writeFileSync(
    join(etc, 'main.cf'),
    Object.entries(settings)
      .map(([k, v]) => `${k} = ${v}\n`)
      .join(''),
  );
  writeFileSync(join(etc, 'master.cf'), MASTER.replace('SMTPD', `127.0.0.1:${port}`));
  await run('/usr/sbin/postfix', ['-c', etc, 'start'], { timeout: 30_000 });
  const maillog = () => (existsSync(join(dir, 'maillog')) ? readFileSync(join(dir, 'maillog'), 'utf8') : '');
  return {
    port,
    dir,
    maillog,
    logged: (re, ms = 30_000) =>
      new Promise<void>((res, rej) => {
        const watcher = watch(dir);
        const done = (e?: Error) => {
          clearTimeout(t);
          watcher.close();
          if (e) rej(e);
          else res();
        };
        const t = setTimeout(() => done(new Error(`Postfix log has no ${re} after ${ms} ms:\n${maillog()}`)), ms);
        const check = () => {
          if (re.test(maillog())) done();
        };
        watcher.on('change', check);
        watcher.on('error', done);
        check();
      }),
    stop: async () => {
      await run('/usr/sbin/postfix', ['-c', etc, 'stop'], { timeout: 30_000 }).catch(() => {});
    },
  };
}
