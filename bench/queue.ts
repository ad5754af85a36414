// The outgoing queue: queue-mail calls/s (in-process, as smtp-receive and
// servers call it, and spawned, as a pipeline does), then run-queue --once
// delivering 2,000 x 4 KB messages to a local IMDP server (server-receive ->
// handle-incoming-mail -> give-recipient, every message fsync'ed at both
// ends): messages/s end to end. QUEUE_N changes the count.
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, existsSync } from 'node:fs';
import { makeCa, makeLeaf } from '../src/cert.js';
import { main as queueMail } from '../src/programs/queue-mail.js';
import { freePort, startListening } from '../test/helpers.js';
import { type Postfix, postfixUnavailable, startPostfix } from '../test/postfix-fixture.js';
import { smallMessage } from './_measure.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
const BIN = join(ROOT, 'bin');
const N = Number(process.env.QUEUE_N ?? 2000);
const SPAWNED = 50;

function pki(dir: string) {
  const ca = makeCa('bench CA', 'bench', { days: 2 }, 2048);
  const save = (domain: string) => {
    const leaf = makeLeaf(ca, { purpose: 'server', commonName: domain, dnsNames: [domain], organization: 'bench' }, { days: 2 });
    writeFileSync(join(dir, `${domain}.crt`), leaf.certPem);
    writeFileSync(join(dir, `${domain}.key`), leaf.keyPem, { mode: 0o600 });
    return { cert: join(dir, `${domain}.crt`), key: join(dir, `${domain}.key`) };
  };
  writeFileSync(join(dir, 'ca.crt'), ca.certPem);
  return { ca: join(dir, 'ca.crt'), a: save('a.test'), b: save('b.test') };
}

const seconds = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e9;

export async function run(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ima-bench-queue-'));
  const env = { PATH: `${BIN}:${process.env.PATH}`, HOME: '/nonexistent', IMA_CONFIG_DIR: dir, IMA_ALLOW_ROOT: '1' };
  try {
    const keys = pki(dir);
    const mailbox = join(dir, 'mail', 'bob');
    for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(mailbox, f), { recursive: true });
    writeFileSync(join(dir, 'him.toml'), `[domains."b.test"]\ncommand = ["give-recipient", "--address", "{address}", "${mailbox}"]\n`);
    writeFileSync(
      join(dir, 'server.toml'),
      `domain = "b.test"\nhandler = ["handle-incoming-mail", "--config", "${join(dir, 'him.toml')}"]\n[tls]\ncertificate = "${keys.b.cert}"\nkey = "${keys.b.key}"\nca = ["${keys.ca}"]\n[limits]\nmax_connections_per_address = 100\n`,
    );
    const server = await startListening('server-receive', ['--config', join(dir, 'server.toml'), '--listen', '127.0.0.1:0'], { env });
    writeFileSync(
      join(dir, 'send-mail.toml'),
      `domain = "a.test"\ndns_srv = false\n[tls]\ncertificate = "${keys.a.cert}"\nkey = "${keys.a.key}"\nca = ["${keys.ca}"]\n[servers]\n"b.test" = "127.0.0.1:${server.port}"\n`,
    );
    writeFileSync(join(dir, 'queue-mail.toml'), `queue_dir = "${join(dir, 'queue')}"\n`);
    writeFileSync(
      join(dir, 'run-queue.toml'),
      `queue_dir = "${join(dir, 'queue')}"\ncommand = ["send-mail", "--config", "${join(dir, 'send-mail.toml')}"]\nmax_parallel = 16\nmax_per_domain = 16\n`,
    );
    try {
      const msgs = await Promise.all(Array.from({ length: N }, () => smallMessage(['bob@b.test'])));
      // queue-mail in-process, 8 callers at once.
      let next = 0;
      const t0 = process.hrtime.bigint();
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          while (next < msgs.length) {
            const m = msgs[next++];
            const code = await queueMail([], { stdin: Readable.from([m]), stdout: new PassThrough().resume(), stderr: process.stderr, env, cwd: dir });
            if (code !== 0) throw new Error(`queue-mail exited ${code}`);
          }
        }),
      );
      const queued = seconds(t0);
      console.log(`queue-mail in-process: ${(N / queued).toFixed(0)} calls/s (${N} x 4 KB, 8 at once, each fsync'ed)`);
      // Spawned: what a shell pipeline pays (node start-up bound).
      const t1 = process.hrtime.bigint();
      for (let i = 0; i < SPAWNED; i++) {
        const r = spawnSync(join(BIN, 'queue-mail'), [], { input: msgs[i], env });
        if (r.status !== 0) throw new Error(`queue-mail exited ${r.status}: ${r.stderr}`);
      }
      console.log(`queue-mail spawned: ${(SPAWNED / seconds(t1)).toFixed(1)} calls/s (${SPAWNED} runs, one process each)`);
      const total = N + SPAWNED;
      const t2 = process.hrtime.bigint();
      const r = spawnSync(join(BIN, 'run-queue'), ['--once'], { env, encoding: 'utf8' });
      const delivering = seconds(t2);
      if (r.status !== 0) throw new Error(`run-queue exited ${r.status}: ${r.stderr}`);
      const stored = readdirSync(join(mailbox, 'new')).length;
      const left = readdirSync(join(dir, 'queue', 'messages')).length;
      if (stored !== N || left !== 0)
        throw new Error(`delivered ${stored} distinct messages of ${N} (the ${SPAWNED} spawned are copies), ${left} files left: ${r.stderr}`);
      console.log(`run-queue --once to IMDP: ${(total / delivering).toFixed(0)} msgs/s (${total} messages in ${delivering.toFixed(1)} s, 16 at once)`);
      console.log(`end to end (queue-mail in-process + run-queue): ${(N / (queued + delivering * (N / total))).toFixed(0)} msgs/s`);
      await postfix(dir, N);
    } finally {
      await server.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The peer: a private Postfix (test/postfix-fixture.ts: its own config, queue
 * and log under `dir`) relaying to smtp-sink; Postfix's sendmail spawned once
 * per message, then the time until its log says every message was sent.
 * Needs root (Postfix's daemons drop to the postfix user); skipped with a
 * line otherwise.
 */
async function postfix(dir: string, n: number): Promise<void> {
  const why = postfixUnavailable() ?? (existsSync('/usr/sbin/smtp-sink') ? undefined : 'smtp-sink is not installed (Debian: postfix)');
  if (why) {
    console.log(`postfix: skipped (${why})`);
    return;
  }
  chmodSync(dir, 0o755); // Postfix's daemons run as the postfix user
  const port = await freePort();
  const sink = spawn('/usr/sbin/smtp-sink', ['-u', 'nobody', `127.0.0.1:${port}`, '256'], { stdio: 'ignore' });
  let pf: Postfix | undefined;
  try {
    pf = await startPostfix({
      dir: join(dir, 'postfix'),
      hostname: 'bench.test',
      relayhost: `[127.0.0.1]:${port}`,
      main: { default_destination_concurrency_limit: '16', html_directory: 'no', readme_directory: 'no' },
    }).catch((e: Error) => void console.log(`postfix: did not start (${e.message.trim()}); skipped`));
    if (!pf) return;
    const log = pf.log;
    const mime = Buffer.from(`From: alice@a.test\nTo: bob@b.test\nSubject: bench\n\n${'x'.repeat(76).concat('\n').repeat(50)}`);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) {
      const r = spawnSync('/usr/sbin/sendmail', ['-C', pf.dir, '-t', '-f', 'alice@a.test'], { input: mime });
      if (r.status !== 0) throw new Error(`sendmail exited ${r.status}: ${r.stderr}`);
    }
    const submitted = seconds(t0);
    console.log(`postfix sendmail spawned: ${(n / submitted).toFixed(0)} calls/s (${n} x 4 KB)`);
    const deadline = Date.now() + 600_000;
    const sent = () => (log().match(/status=sent/g) ?? []).length;
    while (sent() < n && Date.now() < deadline) await new Promise((res) => setTimeout(res, 100)); // a bench, not a test: polling the peer's log
    const total = seconds(t0);
    console.log(
      `postfix end to end (sendmail -> queue -> SMTP relay to smtp-sink): ${(sent() / total).toFixed(0)} msgs/s (${sent()} of ${n} in ${total.toFixed(1)} s)`,
    );
  } finally {
    await pf?.stop();
    sink.kill();
    await once(sink, 'exit').catch(() => {});
  }
}
