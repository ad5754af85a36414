// A big message end to end, every process fresh so its peak RSS is this
// run's alone: make-message with the attachment to a file, send-mail FILE to
// server-receive (handle-incoming-mail -> give-recipient in-process), then
// fetch-mail of it from post-office. 1 GiB (256 MiB with --quick).
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { hashPassword } from '../src/password.js';
import { startListening } from '../test/helpers.js';
import { BIN, type Bench, since } from './_bench.js';
import { measure, patternFile, rssWatcher } from './_measure.js';

export async function run(b: Bench): Promise<void> {
  const pki = b.pki();
  const size = (b.quick ? 256 : 1024) * 1024 * 1024;
  const label = `${size / 1024 / 1024} MiB`;
  const dir = b.fresh('big');
  const att = join(dir, 'big.bin');
  patternFile(att, size);
  const msg = join(dir, 'big.ima');
  const mk = await measure([join(BIN, 'make-message'), '-r', 'alice@a.test', '-t', 'bob@b.test', '--no-body', '-a', att, '-o', msg], { env: b.env });
  if (mk.code !== 0) throw new Error(`make-message: ${mk.stderr}`);
  b.row(`make-message, ${label} attachment to a file`, size / 1e6 / mk.seconds, 'MB/s', undefined, '-');
  b.row(`make-message ${label}: peak RSS`, mk.peakRssMb, 'MB', undefined, '< 100 MB');

  // server-receive storing into bob's mailbox; post-office serving that mailbox.
  const box = join(dir, 'mail');
  for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(box, 'bob', f), { recursive: true });
  writeFileSync(join(dir, 'gr.toml'), 'max_message_bytes = "2G"\n');
  writeFileSync(
    join(dir, 'him.toml'),
    `max_message_bytes = "2G"\n[domains."b.test"]\ncommand = ["give-recipient", "--config", "${join(dir, 'gr.toml')}", "--address", "{address}", "${join(box, '{local}')}"]\nusers = ["bob"]\n`,
  );
  const tlsCfg = `[tls]\ncertificate = "${pki.b.cert}"\nkey = "${pki.b.key}"\nca = ["${pki.caFile}"]\n`;
  writeFileSync(
    join(dir, 'sr.toml'),
    `domain = "b.test"\nhandler = ["handle-incoming-mail", "--config", "${join(dir, 'him.toml')}"]\nin_process = true\n${tlsCfg}[limits]\nmax_message_bytes = "2G"\n`,
  );
  const sr = await startListening('server-receive', ['--config', join(dir, 'sr.toml'), '--listen', '127.0.0.1:0'], { env: b.env });
  try {
    writeFileSync(
      join(dir, 'sm.toml'),
      `domain = "a.test"\ndns_srv = false\nmax_message_bytes = "2G"\n[tls]\ncertificate = "${pki.a.cert}"\nkey = "${pki.a.key}"\nca = ["${pki.caFile}"]\n[servers]\n"b.test" = "127.0.0.1:${sr.port}"\n`,
    );
    const watch = rssWatcher(() => [sr.proc.pid!]);
    const t0 = performance.now();
    const send = spawn(join(BIN, 'send-mail'), ['--config', join(dir, 'sm.toml'), msg], { env: b.env, stdio: ['ignore', 'pipe', 'pipe'] });
    const sendWatch = rssWatcher(() => [send.pid!]);
    let out = '';
    send.stdout.on('data', (d) => (out += d));
    send.stderr.on('data', (d) => (out += d));
    const [code] = (await once(send, 'exit')) as [number];
    const secs = since(t0);
    const srPeak = Math.max(...watch.stop().values());
    const smPeak = Math.max(...sendWatch.stop().values());
    if (code !== 0) throw new Error(`send-mail exited ${code}: ${out}`);
    b.row(`send-mail ${label} -> server-receive -> mailbox`, size / 1e6 / secs, 'MB/s', undefined, '-');
    b.row(`send-mail ${label}: peak RSS`, smPeak, 'MB', undefined, '< 100 MB');
    b.row(`server-receive ${label}: peak RSS`, srPeak, 'MB', undefined, '< 100 MB');
  } finally {
    await sr.stop();
  }

  writeFileSync(join(dir, 'po.toml'), `name = "b.test"\n${tlsCfg}[users.bob]\nmailbox = "${join(box, 'bob')}"\npassword = "${await hashPassword('bench')}"\n`);
  const po = await startListening('post-office', ['--config', join(dir, 'po.toml'), '--listen', '127.0.0.1:0'], { env: b.env });
  try {
    writeFileSync(
      join(dir, 'fm.toml'),
      `server = "127.0.0.1"\nserver_name = "b.test"\nport = ${po.port}\nuser = "bob"\nca = ["${pki.caFile}"]\nmax_message_bytes = "2G"\n`,
    );
    const watch = rssWatcher(() => [po.proc.pid!]);
    const r = await measure([join(BIN, 'fetch-mail'), '--config', join(dir, 'fm.toml'), join(dir, 'fetched')], { env: { ...b.env, IMA_PASSWORD: 'bench' } });
    const poPeak = Math.max(...watch.stop().values());
    if (r.code !== 0) throw new Error(`fetch-mail: ${r.stderr}`);
    b.row(`fetch-mail ${label} from post-office`, size / 1e6 / r.seconds, 'MB/s', undefined, '-');
    b.row(`fetch-mail ${label}: peak RSS (post-office ${poPeak.toFixed(0)} MB)`, r.peakRssMb, 'MB', undefined, '< 100 MB');
  } finally {
    await po.stop();
  }
}
