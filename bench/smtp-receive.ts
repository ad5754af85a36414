// SMTP benchmark: Postfix's load generator smtp-source against smtp-receive
// -> handle-incoming-mail -> give-recipient (in-process, each message
// fsync'ed into a mailbox before the 250), beside a private Postfix receiving
// the same load into a Maildir (virtual delivery), in the same run. 2,000 x
// 4 KB from 10 parallel sessions, a connection per message (smtp-source's
// way, and a typical MX's: one message per connection from most senders)
// and with each session's connection reused (-d, as an MTA's connection
// cache does); 200 x 1 MB: messages/s, MB/s, peak RSS, and the CPU the
// receiving processes spend per message (/proc). The Postfix figure
// counts until the last message is in the Maildir. The two sides take each
// load in turn. Our server takes each load twice: first cold, then warm
// (V8 has compiled its hot code by then; a cold Node process spends a
// fifth of its CPU in the optimizing compiler over a 2,000-message load),
// as Postfix, started once, is warm for all but the first.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Pki } from '../test/pki.js';
import { type Listening, startListening, testEnv } from '../test/helpers.js';
import { postfixUnavailable, startPostfix } from '../test/postfix-fixture.js';
import { cpuPerMessage, largestPeakRssMb, treeCpu } from './_measure.js';
import { type Bench, WORKERS, serving } from './_bench.js';

interface Load {
  label: string;
  messages: number;
  sessions: number;
  bytes: number;
  /** Each session sends its messages over one connection (smtp-source -d); otherwise a connection per message. */
  reuse: boolean;
}
function loads(bench: Bench): Load[] {
  const small = bench.n(2000, 100);
  const big = bench.n(200, 20);
  return [
    { label: `${small} x 4 KB, 10 sessions, a connection per message`, messages: small, sessions: 10, bytes: 4096, reuse: false },
    { label: `${small} x 4 KB, 10 sessions, connections reused`, messages: small, sessions: 10, bytes: 4096, reuse: true },
    { label: `${big} x 1 MB, 10 sessions, a connection per message`, messages: big, sessions: 10, bytes: 1024 * 1024, reuse: false },
  ];
}

interface Figure {
  perSecond: number;
  mbPerSecond: number;
  rss: number;
  /** CPU milliseconds the receiving side's processes spent per message. */
  cpuMs: number;
}
/** Figures by side ('ours', 'postfix') and load label, for the closing table. */
const figures = new Map<string, Figure>();

/**
 * smtp-source: `messages` messages over `sessions` parallel sessions. It
 * disconnects after each message unless told -d. (-C is not a count of
 * messages per session but of retries after a RST to SYN.)
 */
async function source(port: number, load: Load, rcpt: string): Promise<void> {
  const argv = ['-s', String(load.sessions), '-m', String(load.messages), '-l', String(load.bytes), ...(load.reuse ? ['-d'] : [])];
  const p = spawn('/usr/sbin/smtp-source', [...argv, '-f', 'alice@a.test', '-t', rcpt, `127.0.0.1:${port}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  p.stderr.on('data', (d: Buffer) => (err += d));
  const [code] = (await once(p, 'exit')) as [number];
  if (code !== 0) throw new Error(`smtp-source exited ${code}: ${err}`);
}

const count = (dir: string) => (existsSync(dir) ? readdirSync(dir).length : 0);

/** Wait until dir holds n entries (a deadline; the directory is looked at as it changes). */
async function filled(dir: string, n: number, ms = 600_000): Promise<void> {
  const t0 = Date.now();
  while (count(dir) < n) {
    if (Date.now() - t0 > ms) throw new Error(`${dir}: ${count(dir)} of ${n} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function line(
  side: 'ours' | 'ours warm' | 'postfix',
  who: string,
  load: Load,
  secs: number,
  rss: number,
  cpu: { ms: number; systemMs: number },
  idle?: number,
): void {
  const f = { perSecond: load.messages / secs, mbPerSecond: (load.messages * load.bytes) / secs / 1024 / 1024, rss, cpuMs: cpu.ms };
  figures.set(`${side} ${load.label}`, f);
  console.log(
    `  smtp-receive bench: ${who}, ${load.label}: ${f.perSecond.toFixed(0)} messages/s, ${f.mbPerSecond.toFixed(1)} MB/s, peak RSS ${rss.toFixed(0)} MB${idle === undefined ? '' : ` (idle before the load: ${idle.toFixed(0)} MB)`}, CPU per message ${cpu.ms.toFixed(2)} ms (system ${cpu.systemMs.toFixed(2)} ms)`,
  );
}

/** smtp-receive's side: its configs written once; each load gets a fresh server, so its peak RSS is that load's alone. */
function ours(dir: string): (load: Load, i: number) => Promise<void> {
  mkdirSync(dir, { recursive: true });
  const pki = new Pki(dir);
  const cert = pki.server('mx.b.test');
  writeFileSync(
    join(dir, 'handle-incoming-mail.toml'),
    `[domains."b.test"]\ncommand = ["give-recipient", "--address", "{address}", ${JSON.stringify(join(dir, 'mail', '{local}'))}]\n`,
  );
  writeFileSync(
    join(dir, 'smtp-receive.toml'),
    `hostname = "mx.b.test"\nworkers = ${WORKERS}\n[tls]\ncertificate = "${cert.cert}"\nkey = "${cert.key}"\n[limits]\nmax_connections_per_address = 20\n[mx]\nverdicts = false\n`,
  );
  return async (load, i) => {
    const user = `u${i}`;
    const srv: Listening = await serving(
      await startListening('smtp-receive', ['--config', join(dir, 'smtp-receive.toml'), '--listen', '127.0.0.1:0'], { env: testEnv({ IMA_CONFIG_DIR: dir }) }),
    );
    try {
      const idle = largestPeakRssMb(srv.proc.pid!); // listening, nothing received yet: what start-up and loaded code cost
      for (const side of ['ours', 'ours warm'] as const) {
        const mailbox = side === 'ours' ? user : `${user}w`;
        for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(dir, 'mail', mailbox, f), { recursive: true });
        const cpu = treeCpu(srv.proc.pid!);
        const t0 = process.hrtime.bigint();
        await source(srv.port, load, `${mailbox}@b.test`);
        const secs = Number(process.hrtime.bigint() - t0) / 1e9;
        const got = count(join(dir, 'mail', mailbox, 'new'));
        if (got !== load.messages) throw new Error(`smtp-receive stored ${got} of ${load.messages}: ${srv.log().slice(-2000)}`);
        const cost = cpuPerMessage(srv.proc.pid!, cpu, load.messages);
        const who = `smtp-receive${side === 'ours' ? '' : ' warm (its second load)'}, ${WORKERS} worker(s) (in-process chain, fsync per message)`;
        line(side, who, load, secs, largestPeakRssMb(srv.proc.pid!), cost, side === 'ours' ? idle : undefined);
      }
    } finally {
      await srv.stop();
    }
  };
}

/** Postfix's side, started once; each load's figure runs until its last message is in the Maildir. */
async function theirs(dir: string): Promise<{ run(load: Load): Promise<void>; stop(): Promise<void> }> {
  const pf = await startPostfix({
    dir: join(dir, 'postfix'),
    hostname: 'relay.a.test',
    mailboxes: ['bob@b.test'],
    main: { smtpd_client_connection_count_limit: '0', default_process_limit: '100' },
  });
  let delivered = 0;
  return {
    async run(load) {
      const cpu = treeCpu(pf.masterPid());
      const t0 = process.hrtime.bigint();
      await source(pf.port, load, 'bob@b.test');
      delivered += load.messages;
      await filled(pf.maildirNew('bob@b.test'), delivered);
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      line('postfix', 'Postfix (smtpd -> virtual, Maildir)', load, secs, largestPeakRssMb(pf.masterPid()), cpuPerMessage(pf.masterPid(), cpu, load.messages));
    },
    stop: () => pf.stop(),
  };
}

export async function run(bench: Bench): Promise<void> {
  if (!existsSync('/usr/sbin/smtp-source')) {
    console.log('  smtp-receive bench: skipped (smtp-source not installed: apt-get install postfix)');
    return;
  }
  const dir = bench.fresh('smtp-receive');
  const LOADS = loads(bench);
  const ourLoad = ours(join(dir, 'ours'));
  const missing = postfixUnavailable();
  if (missing) console.log(`  smtp-receive bench: Postfix side skipped (${missing})`);
  const postfix = missing ? undefined : await theirs(join(dir, 'theirs'));
  try {
    // Load by load, each side in turn: this machine's disk changes its pace within minutes.
    for (const [i, load] of LOADS.entries()) {
      await ourLoad(load, i);
      await postfix?.run(load);
    }
  } finally {
    await postfix?.stop();
  }
  for (const load of LOADS) {
    const us = figures.get(`ours ${load.label}`);
    const pf = figures.get(`postfix ${load.label}`);
    if (!us) continue;
    const small = load.bytes <= 4096;
    const pick = (f: Figure) => (small ? f.perSecond : f.mbPerSecond);
    const peer = pf && { name: 'Postfix', figure: pick(pf) };
    const warm = figures.get(`ours warm ${load.label}`)!;
    bench.row(`smtp-receive ${load.label} (smtp-source)`, pick(us), small ? 'msg/s' : 'MB/s', peer, '>= 1.0x Postfix');
    bench.row(`smtp-receive ${load.label}, warm server (its second load)`, pick(warm), small ? 'msg/s' : 'MB/s', peer, '>= 1.0x Postfix');
    // The peak over both loads: the process's whole life.
    bench.row(`smtp-receive ${load.label}: peak RSS`, Math.max(us.rss, warm.rss), 'MB', pf && { name: 'largest Postfix process', figure: pf.rss }, '< 100 MB');
    bench.row(`smtp-receive ${load.label}: CPU per message (lower is better)`, us.cpuMs, 'ms', pf && { name: "Postfix's processes", figure: pf.cpuMs }, '-');
    bench.row(`smtp-receive ${load.label}, warm server: CPU per message`, warm.cpuMs, 'ms', pf && { name: "Postfix's processes", figure: pf.cpuMs }, '-');
  }
}
