// Receiving: server-receive (handle-incoming-mail -> give-recipient, both
// in-process, every message fsync'ed before OK) against a private Postfix
// over mutual TLS delivering into a Maildir (virtual(8), fsync'ed), same
// sizes, same connection counts, in the same run:
// - 4 KB messages over 10 reused connections, each message answered before
//   the next (no pipelining between messages), on a cold server and again
//   on the same server warm, and pipelined;
// - a TLS handshake per message (sessions resumed where both sides can);
// - 1 MiB messages, cold and warm on a fresh server, with the peak RSS of
//   every process;
// - for 4 KB (each mode), the CPU each side's processes spend per message
//   (user and system, from /proc): a rate is how the machine shares out;
//   this is cost.
// Postfix's figure runs until the last message is in the Maildir, not just
// until its 250 (it queues first and delivers after).
import { readFileSync, readdirSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import tls, { type TLSSocket } from 'node:tls';
import { ImdpClient } from '../src/imdp/client.js';
import { type Listening, startListening } from '../test/helpers.js';
import { type Bench, type Pki, WORKERS, serving, since, until } from './_bench.js';
import { cpuPerMessage, imaMessage, mimeMessage, rssWatcher, treeCpu } from './_measure.js';
import { type Postfix, postfixUnavailable, startPostfix } from '../test/postfix-fixture.js';
import { have, must } from './_peers.js';

const SMTP_PORT = 52000 + (process.pid % 1000);
const BOB = 'bob@b.test';

// ---- the SMTP side: a small client over TLS with a client certificate ----

/** Reads SMTP replies (multi-line aware) off a socket. */
class Replies {
  private buf = '';
  private waiting: { n: number; resolve: (codes: number[]) => void; reject: (e: Error) => void } | undefined;
  private codes: number[] = [];
  constructor(private readonly socket: TLSSocket) {
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      this.buf += d;
      for (let i = this.buf.indexOf('\n'); i !== -1; i = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        if (line[3] !== '-') this.codes.push(Number(line.slice(0, 3)));
      }
      this.settle();
    });
    socket.on('error', (e) => this.waiting?.reject(e));
    socket.on('close', () => this.waiting?.reject(new Error('smtp: connection closed')));
  }
  private settle(): void {
    if (this.waiting && this.codes.length >= this.waiting.n) {
      const w = this.waiting;
      this.waiting = undefined;
      w.resolve(this.codes.splice(0, w.n));
    }
  }
  /** The next n replies; throws unless every one is 2xx or 3xx. */
  async next(n: number): Promise<void> {
    const codes = await new Promise<number[]>((resolve, reject) => {
      this.waiting = { n, resolve, reject };
      this.settle();
    });
    const bad = codes.find((c) => c >= 400);
    if (bad) throw new Error(`smtp: reply ${bad}`);
  }
}

let smtpSession: Buffer | undefined;
// Made once, as the toolkit's client keeps its own (src/net/tls.ts): the two
// sides' load generators pay the same per connection.
let smtpContext: tls.SecureContext | undefined;

async function smtpConnect(port: number, pki: Pki): Promise<{ socket: TLSSocket; replies: Replies }> {
  smtpContext ??= tls.createSecureContext({ cert: readFileSync(pki.a.cert), key: readFileSync(pki.a.key), ca: readFileSync(pki.caFile) });
  const socket = tls.connect({
    host: '127.0.0.1',
    port,
    servername: 'b.test',
    secureContext: smtpContext,
    session: smtpSession,
  });
  socket.setNoDelay(true);
  socket.on('session', (s: Buffer) => (smtpSession = s));
  const replies = new Replies(socket);
  await new Promise<void>((res, rej) => {
    socket.once('secureConnect', res);
    socket.once('error', rej);
  });
  await replies.next(1);
  socket.write('EHLO a.test\r\n');
  await replies.next(1);
  return { socket, replies };
}

/** Send messages on one connection: MAIL/RCPT/DATA grouped (RFC 2920); with `pipelined` the next group follows each "." at once. */
async function smtpSend(port: number, pki: Pki, messages: Buffer[], pipelined: boolean): Promise<void> {
  const { socket, replies } = await smtpConnect(port, pki);
  const envelope = 'MAIL FROM:<alice@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n';
  socket.write(envelope);
  for (let i = 0; i < messages.length; i++) {
    await replies.next(3); // MAIL, RCPT, 354
    socket.write(messages[i]);
    socket.write('.\r\n');
    if (pipelined && i + 1 < messages.length) socket.write(envelope);
    await replies.next(1); // 250 queued
    if (!pipelined && i + 1 < messages.length) socket.write(envelope);
  }
  socket.write('QUIT\r\n');
  await replies.next(1).catch(() => undefined);
  socket.destroy();
}

const countIn = (dir: string) => {
  try {
    return readdirSync(dir).length;
  } catch {
    return 0;
  }
};

/** Postfix: n messages over `lanes` connections (or one connection per message); seconds until all are in the Maildir. */
async function postfixRun(pf: Postfix, pki: Pki, msgs: Buffer[], lanes: number, mode: 'reuse' | 'pipelined' | 'per-message'): Promise<number> {
  const before = countIn(pf.maildirNew(BOB));
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: lanes }, async (_, lane) => {
      const mine = msgs.filter((_m, i) => i % lanes === lane);
      if (mode === 'per-message') for (const m of mine) await smtpSend(pf.port, pki, [m], false);
      else await smtpSend(pf.port, pki, mine, mode === 'pipelined');
    }),
  );
  await until(() => countIn(pf.maildirNew(BOB)) >= before + msgs.length, 600, 'Postfix delivery');
  return since(t0);
}

/**
 * The peer: smtpd on SMTP_PORT in wrapper-mode TLS requiring a client
 * certificate from the bench CA (mutual TLS, as IMDP), without TLS on the
 * next port (for smtp-source), TLS session tickets and cache on, delivering
 * bob@b.test through virtual(8) into a Maildir (each message fsync'ed
 * before 250); no size, rate or connection limits.
 */
function startReceivingPostfix(dir: string, pki: Pki): Promise<Postfix> {
  return startPostfix({
    dir,
    hostname: 'b.test',
    port: SMTP_PORT,
    mailboxes: [BOB],
    tls: { ...pki.b, clientCa: pki.caFile, wrapperMode: true, plainPort: SMTP_PORT + 1 },
    main: {
      virtual_destination_concurrency_limit: '20',
      message_size_limit: '0',
      mailbox_size_limit: '0',
      virtual_mailbox_limit: '0',
      smtpd_client_connection_count_limit: '0',
      smtpd_client_connection_rate_limit: '0',
      smtpd_client_message_rate_limit: '0',
      smtpd_tls_session_cache_database: `btree:${dir}/data/smtpd_scache`,
    },
  });
}

// ---- the toolkit side ----

async function startServerReceive(b: Bench, pki: Pki): Promise<Listening> {
  const dir = b.fresh('server-receive');
  const mailbox = join(dir, 'mail');
  for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(mailbox, 'bob', f), { recursive: true });
  const gr = join(dir, 'give-recipient.toml');
  writeFileSync(gr, 'max_message_bytes = "2G"\n');
  const him = join(dir, 'handle-incoming-mail.toml');
  writeFileSync(
    him,
    `max_message_bytes = "2G"\n[domains."b.test"]\ncommand = ["give-recipient", "--config", ${JSON.stringify(gr)}, "--address", "{address}", ${JSON.stringify(join(mailbox, '{local}'))}]\nusers = ["bob"]\n`,
  );
  const cfg = join(dir, 'server-receive.toml');
  writeFileSync(
    cfg,
    `domain = "b.test"\nhandler = ["handle-incoming-mail", "--config", ${JSON.stringify(him)}]\nin_process = true\nworkers = ${WORKERS}\n[tls]\ncertificate = "${pki.b.cert}"\nkey = "${pki.b.key}"\nca = ["${pki.caFile}"]\n[limits]\nmax_message_bytes = "2G"\nmax_messages_per_connection = 1000000\nmax_connections_per_address = 50\n`,
  );
  return serving(await startListening('server-receive', ['--config', cfg, '--listen', '127.0.0.1:0'], { env: b.env, echo: /TEMPFAIL|error|warning/ }));
}

const headersOf = (tar: Buffer) => tar.subarray(512, 512 + parseInt(tar.subarray(124, 136).toString().trim(), 8));

async function imdpConnect(port: number, pki: Pki): Promise<ImdpClient> {
  return ImdpClient.connect({
    host: '127.0.0.1',
    port,
    domain: 'b.test',
    tls: { cert: readFileSync(pki.a.cert), key: readFileSync(pki.a.key), ca: readFileSync(pki.caFile) },
    timeout: 120_000,
  });
}

/** One connection: messages with up to `window` in flight (1 = each answered before the next). */
async function imdpSend(port: number, pki: Pki, messages: Buffer[], window: number): Promise<void> {
  const client = await imdpConnect(port, pki);
  let sent = 0;
  let answered = 0;
  const pump = async () => {
    while (sent < messages.length && sent - answered < window) {
      const m = messages[sent++];
      client.sendMail(headersOf(m), m.length);
      await client.sendData(m, m.length);
    }
  };
  await pump();
  while (answered < messages.length) {
    const a = await client.readAnswer();
    if (a.word !== 'ACCEPT') throw new Error(`imdp: refused: ${a.word} ${a.text}`);
    const r = await client.readResult();
    if (r.word !== 'OK') throw new Error(`imdp: ${r.word} ${r.text}`);
    answered++;
    await pump();
  }
  await client.done();
}

async function toolkitRun(port: number, pki: Pki, msgs: Buffer[], lanes: number, mode: 'reuse' | 'pipelined' | 'per-message'): Promise<number> {
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: lanes }, async (_, lane) => {
      const mine = msgs.filter((_m, i) => i % lanes === lane);
      if (mode === 'per-message') for (const m of mine) await imdpSend(port, pki, [m], 1);
      else await imdpSend(port, pki, mine, mode === 'pipelined' ? 16 : 1);
    }),
  );
  return since(t0);
}

interface Rated {
  perSecond: number;
  /** CPU per message of the receiving side's processes (the load generator not counted). */
  cost: { ms: number; systemMs: number };
}

/** Messages per second of `run` (which says how many seconds it took for n messages), and what the process tree at pid spent per message meanwhile. */
async function rated(pid: number, n: number, run: () => Promise<number>): Promise<Rated> {
  const before = treeCpu(pid);
  const perSecond = n / (await run());
  return { perSecond, cost: cpuPerMessage(pid, before, n) };
}

/** The rate against Postfix's, then where it goes: the CPU per message beside Postfix's, the system part in the log line. */
function rateAndCostRows(b: Bench, what: string, ours: Rated, peer: Rated, target: string): void {
  b.row(what, ours.perSecond, 'msg/s', { name: 'Postfix mTLS', figure: peer.perSecond }, target);
  console.log(`  (${what}: system CPU per message: ours ${ours.cost.systemMs.toFixed(2)} ms, Postfix's ${peer.cost.systemMs.toFixed(2)} ms)`);
  b.row(`${what}: CPU per message (lower is better)`, ours.cost.ms, 'ms', { name: "Postfix's processes", figure: peer.cost.ms }, '-');
}

export async function run(b: Bench): Promise<void> {
  const why = postfixUnavailable();
  if (why) throw new Error(`bench: ${why}`);
  const pki = b.pki();
  const pf = await startReceivingPostfix(b.fresh('postfix'), pki);
  try {
    const small = b.n(2000, 200);
    const lanes = 10;
    // Warm both (TLS contexts, processes) with a few messages first.
    await postfixRun(
      pf,
      pki,
      Array.from({ length: 20 }, (_, i) => mimeMessage(4096, i)),
      lanes,
      'reuse',
    ).catch((e: Error) => {
      throw new Error(`${e.message}\n${pf.log().slice(-2000)}`);
    });
    const server = await startServerReceive(b, pki);
    try {
      await toolkitRun(server.port, pki, await Promise.all(Array.from({ length: 20 }, () => imaMessage(4096))), lanes, 'reuse');
      // The first load finds a cold server (V8 still compiling its hot
      // code); the same load again, its second, a warm one, as Postfix is.
      for (const [mode, loads] of [
        ['reuse', 2],
        ['pipelined', 1],
      ] as const) {
        const pfMsgs = Array.from({ length: small }, (_, i) => mimeMessage(4096, i));
        const peer = await rated(pf.masterPid(), small, () => postfixRun(pf, pki, pfMsgs, lanes, mode));
        for (let load = 0; load < loads; load++) {
          const imaMsgs = await Promise.all(Array.from({ length: small }, () => imaMessage(4096)));
          const ours = await rated(server.proc.pid!, small, () => toolkitRun(server.port, pki, imaMsgs, lanes, mode));
          const what = `receive ${small} x 4 KB, ${lanes} connections, ${mode === 'reuse' ? 'no pipelining' : 'pipelined'}${load > 0 ? ', warm server (its second load)' : ''}`;
          rateAndCostRows(b, what, ours, peer, mode === 'reuse' ? '>= 1.0x' : '>= 1.5x');
        }
      }
      const hs = b.n(600, 100);
      const pfHs = Array.from({ length: hs }, (_, i) => mimeMessage(4096, i));
      const peer = await rated(pf.masterPid(), hs, () => postfixRun(pf, pki, pfHs, lanes, 'per-message'));
      const hsMsgs = await Promise.all(Array.from({ length: hs }, () => imaMessage(4096)));
      const ours = await rated(server.proc.pid!, hs, () => toolkitRun(server.port, pki, hsMsgs, lanes, 'per-message'));
      rateAndCostRows(b, `receive ${hs} x 4 KB, TLS handshake per message`, ours, peer, '>= 1.0x');
      if (have('/usr/sbin/smtp-source')) {
        // smtp-source has no TLS: Postfix's plain-text ceiling on its second port, for scale.
        const before = countIn(pf.maildirNew(BOB));
        const t0 = performance.now();
        must('/usr/sbin/smtp-source', [
          '-s',
          String(lanes),
          '-m',
          String(small),
          '-l',
          '4096',
          '-f',
          'alice@a.test',
          '-t',
          'bob@b.test',
          `127.0.0.1:${pf.port + 1}`,
        ]);
        await until(() => countIn(pf.maildirNew(BOB)) >= before + small, 600, 'Postfix delivery');
        console.log(`  (Postfix without TLS, smtp-source -s ${lanes}: ${(small / since(t0)).toFixed(0)} msg/s; not in the table: no TLS)`);
      }
    } finally {
      await server.stop();
    }

    // 1 MiB messages: a fresh server-receive so its peak RSS is this phase's alone.
    const big = b.n(200, 40);
    const size = 1024 * 1024;
    const pfWatch = rssWatcher(() => [pf.masterPid()]);
    const peerSecs = await postfixRun(
      pf,
      pki,
      Array.from({ length: big }, (_, i) => mimeMessage(size, i)),
      lanes,
      'reuse',
    );
    const pfPeak = Math.max(...pfWatch.stop().values());
    const server2 = await startServerReceive(b, pki);
    try {
      const watch = rssWatcher(() => [server2.proc.pid!]);
      const mbs = (s: number) => (big * size) / 1e6 / s;
      // Cold, then warm, as for 4 KB; the peak RSS is of both loads.
      for (const load of ['', ', warm server (its second load)']) {
        const msgs = await Promise.all(Array.from({ length: big }, () => imaMessage(size)));
        const secs = await toolkitRun(server2.port, pki, msgs, lanes, 'reuse');
        b.row(`receive ${big} x 1 MiB, ${lanes} connections${load}`, mbs(secs), 'MB/s', { name: 'Postfix mTLS', figure: mbs(peerSecs) }, '>= 1.0x');
      }
      const peak = Math.max(...watch.stop().values());
      b.row(`receive 1 MiB: peak RSS server-receive (both loads)`, peak, 'MB', { name: 'largest Postfix process', figure: pfPeak }, '< 100 MB');
    } finally {
      await server2.stop();
    }
  } finally {
    await pf.stop();
  }
}
