// Fetching: fetch-mail from post-office against mbsync (isync) from a
// private Dovecot over IMAPS, the same number of 1 MiB messages, both
// storing every message fsync'ed into a local mailbox. mbsync keeps the
// server's copies, so fetch-mail runs with --keep too (and with a
// certificate login instead of a password), besides its default (delete).
import { X509Certificate } from 'node:crypto';
import { cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { deliverToMailbox } from '../src/mailbox.js';
import { hashPassword } from '../src/password.js';
import { startListening } from '../test/helpers.js';
import { BIN, type Bench, since } from './_bench.js';
import { imaMessage, measure, mimeMessage, rssWatcher } from './_measure.js';
import { have, launchDovecot, mbsyncConfig, must, startDovecot } from './_peers.js';

const IMAPS_PORT = 53000 + (process.pid % 1000);
const SIZE = 1024 * 1024;

export async function run(b: Bench): Promise<void> {
  if (!have('dovecot') || !have('mbsync')) throw new Error('bench: dovecot and mbsync are not installed (apt-get install dovecot-imapd isync)');
  const pki = b.pki();
  const n = b.n(200, 40);
  const mbs = (secs: number) => (n * SIZE) / 1e6 / secs;

  // The peer: Dovecot serving n messages, mbsync pulling them into a fresh Maildir.
  const dd = b.fresh('dovecot');
  const dovecot = startDovecot(dd, pki, IMAPS_PORT);
  for (let i = 0; i < n; i++) writeFileSync(join(dovecot.maildir, 'new', `17000000${i}.M${i}P1.bench`), mimeMessage(SIZE, i));
  launchDovecot(dd);
  let peer: number;
  let peerRss = 0;
  try {
    const near = b.fresh('mbsync-near');
    const rc = mbsyncConfig(dd, pki, IMAPS_PORT, near);
    const watch = rssWatcher(() => [dovecot.masterPid()]);
    const m = await measure(['mbsync', '-c', rc, '-a'], { env: b.env });
    peerRss = Math.max(...watch.stop().values(), m.peakRssMb);
    if (m.code !== 0) throw new Error(`mbsync exited ${m.code}: ${m.stderr}${readFileSync(join(dd, 'dovecot.log'), 'utf8').slice(-1500)}`);
    peer = mbs(m.seconds);
    console.log(`  (mbsync peak RSS ${m.peakRssMb.toFixed(0)} MB; largest of mbsync and Dovecot's processes ${peerRss.toFixed(0)} MB)`);
  } finally {
    dovecot.stop();
  }

  // The toolkit: one mailbox filled once, copied for each user (each run fetches everything).
  const pd = b.fresh('post-office');
  const template = join(pd, 'template');
  for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(template, f), { recursive: true });
  for (let i = 0; i < n; i++) await deliverToMailbox(template, Readable.from([await imaMessage(SIZE)]));
  const users = ['warm', 'pw', 'keep', 'cert'];
  for (const u of users) cpSync(template, join(pd, u), { recursive: true });
  const hash = await hashPassword('bench');
  const fp = new X509Certificate(readFileSync(pki.a.cert)).fingerprint256.replace(/:/g, '').toLowerCase();
  writeFileSync(
    join(pd, 'po.toml'),
    `name = "b.test"\n[tls]\ncertificate = "${pki.b.cert}"\nkey = "${pki.b.key}"\nca = ["${pki.caFile}"]\n` +
      `[users.warm]\nmailbox = "warm"\npassword = "${hash}"\n[users.pw]\nmailbox = "pw"\npassword = "${hash}"\n[users.keep]\nmailbox = "keep"\npassword = "${hash}"\n[users.cert]\nmailbox = "cert"\ncertificate_sha256 = ["${fp}"]\n`,
  );
  const po = await startListening('post-office', ['--config', join(pd, 'po.toml'), '--listen', '127.0.0.1:0'], { env: b.env });
  try {
    const fm = (user: string, extra: string) => {
      const file = join(pd, `fm-${user}.toml`);
      writeFileSync(
        file,
        `server = "127.0.0.1"\nserver_name = "b.test"\nport = ${po.port}\nuser = "${user}"\nca = ["${pki.caFile}"]\nmax_message_bytes = "2G"\n${extra}`,
      );
      return file;
    };
    // Dovecot starts an imap process per login, compiled C; post-office is
    // a server whose first run after its start also compiles its hot code
    // (V8). One untimed fetch first, so that every timed run meets the
    // server as it runs for the rest of its life (five runs in a row:
    // 166, 178, 197, 186, 169 MB/s).
    const warm = await measure([join(BIN, 'fetch-mail'), '--config', fm('warm', ''), '--keep', b.fresh('fetched')], {
      env: { ...b.env, IMA_PASSWORD: 'bench' },
    });
    if (warm.code !== 0) throw new Error(`fetch-mail (warming post-office) exited ${warm.code}: ${warm.stderr}`);
    // The run that deletes goes last: on ext4 without a journal the files it
    // removes would make the next run's creations cost more (filesystemWarning).
    const runs: [string, string, string[]][] = [
      ['--keep, password', fm('keep', ''), ['--keep']],
      ['--keep, certificate login', fm('cert', `certificate = "${pki.a.cert}"\nkey = "${pki.a.key}"\n`), ['--keep']],
      ['default (delete), password', fm('pw', ''), []],
    ];
    for (const [label, cfg, flags] of runs) {
      const watch = rssWatcher(() => [po.proc.pid!]);
      const t0 = performance.now();
      const r = await measure([join(BIN, 'fetch-mail'), '--config', cfg, ...flags, b.fresh('fetched')], { env: { ...b.env, IMA_PASSWORD: 'bench' } });
      const secs = since(t0);
      const poPeak = Math.max(...watch.stop().values());
      if (r.code !== 0) throw new Error(`fetch-mail exited ${r.code}: ${r.stderr}`);
      b.row(`fetch ${n} x 1 MiB, ${label}`, mbs(secs), 'MB/s', { name: 'mbsync/Dovecot', figure: peer }, '>= 1.0x');
      if (label.startsWith('--keep, password'))
        b.row(
          `fetch 1 MiB: peak RSS fetch-mail (post-office ${poPeak.toFixed(0)} MB)`,
          Math.max(r.peakRssMb, 0),
          'MB',
          { name: 'largest of mbsync/Dovecot', figure: peerRss },
          '< 100 MB',
        );
    }
    must('true', []);
  } finally {
    await po.stop();
  }
}
