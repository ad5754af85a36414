// IMDP benchmark: messages per second into server-receive (1 and 10
// connections, many pipelined messages each, driven by the toolkit's own
// IMDP client), with spawned and in-process handlers; send-mail runs per
// second; a 1 GiB attachment end to end (MB/s, peak RSS of each process).
// Every process is real; figures depend on a shared machine.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeCa, makeLeaf } from '../src/cert.js';
import { ImdpClient } from '../src/imdp/client.js';
import { isProgram } from '../src/programs/index.js';
import { type Listening, startListening } from '../test/helpers.js';
import { patternFile, smallMessage } from './_measure.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
const BIN = join(ROOT, 'bin');
const env = { PATH: `${BIN}:${process.env.PATH}`, HOME: '/nonexistent', IMA_CONFIG_DIR: '/nonexistent', IMA_ALLOW_ROOT: '1' };

interface Pki {
  caFile: string;
  a: { cert: string; key: string };
  b: { cert: string; key: string };
}

function makePki(dir: string): Pki {
  const ca = makeCa('bench CA', 'bench', { days: 2 }, 2048);
  const save = (name: string, domain: string) => {
    const leaf = makeLeaf(ca, { purpose: 'server', commonName: domain, dnsNames: [domain], organization: 'bench' }, { days: 2 });
    writeFileSync(join(dir, `${name}.crt`), leaf.certPem);
    writeFileSync(join(dir, `${name}.key`), leaf.keyPem, { mode: 0o600 });
    return { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
  };
  writeFileSync(join(dir, 'ca.crt'), ca.certPem);
  return { caFile: join(dir, 'ca.crt'), a: save('a', 'a.test'), b: save('b', 'b.test') };
}

/**
 * The delivery chain behind server-receive. With handle-incoming-mail and
 * give-recipient (issue 3) in the registry: the real chain, in-process or
 * spawned. Until then: a stand-in that writes the message and fsyncs it.
 */
function chain(dir: string, inProcess: boolean): { handler: string[]; inProcess: boolean; label: string } | undefined {
  const real = isProgram('handle-incoming-mail') && isProgram('give-recipient');
  if (real) {
    const cfg = join(dir, 'handle-incoming-mail.toml');
    const mailbox = join(dir, 'mailboxes', `${inProcess ? 'in' : 'sp'}`);
    for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(mailbox, 'bob', f), { recursive: true });
    const gr = join(dir, 'give-recipient.toml');
    writeFileSync(gr, 'max_message_bytes = "2G"\n');
    writeFileSync(
      cfg,
      `max_message_bytes = "2G"\n[domains."b.test"]\ncommand = ["give-recipient", "--config", ${JSON.stringify(gr)}, "--address", "{address}", ${JSON.stringify(join(mailbox, '{local}'))}]\nusers = ["bob"]\n`,
    );
    return { handler: ['handle-incoming-mail', '--config', cfg], inProcess, label: 'handle-incoming-mail -> give-recipient' };
  }
  if (inProcess) return undefined;
  const script = join(dir, 'store.mjs');
  writeFileSync(
    script,
    `import { openSync, writeSync, fsyncSync, closeSync } from 'node:fs';
const fd = openSync(process.argv[2] + '/' + process.pid + '-' + Date.now() + '-' + Math.random().toString(36).slice(2), 'wx');
for await (const c of process.stdin) writeSync(fd, c);
fsyncSync(fd); closeSync(fd); console.log('OK bob@b.test');\n`,
  );
  const out = join(dir, 'store');
  mkdirSync(out, { recursive: true });
  return { handler: ['node', script, out], inProcess: false, label: 'stand-in store handler (node, fsync)' };
}

async function startServer(dir: string, pki: Pki, handler: string[], inProcess: boolean, extra = ''): Promise<Listening> {
  const file = join(dir, `server-${Math.random().toString(36).slice(2)}.toml`);
  writeFileSync(
    file,
    `domain = "b.test"\nhandler = ${JSON.stringify(handler)}\nin_process = ${inProcess}\n[tls]\ncertificate = "${pki.b.cert}"\nkey = "${pki.b.key}"\nca = ["${pki.caFile}"]\n[limits]\nmax_message_bytes = "2G"\nmax_messages_per_connection = 1000000\nmax_connections_per_address = 50\n${extra}`,
  );
  // Log lines of trouble are shown as they come; the info line per message is not.
  return startListening('server-receive', ['--config', file, '--listen', '127.0.0.1:0'], { env, echo: /TEMPFAIL|error|warning/ });
}

let seq = 0;
/** A 4 KB message as send-mail would send it (mailer set), numbered. */
const message4k = () =>
  smallMessage(
    ['bob@b.test'],
    [
      ['mailer', 'a.test'],
      ['x-seq', String(++seq)],
    ],
    3000,
  );

const headersOf = (tar: Buffer) => tar.subarray(512, 512 + parseInt(tar.subarray(124, 136).toString().trim(), 8));

/** One connection sending `count` messages, up to `window` in flight (pipelined). */
async function sendMany(port: number, pki: Pki, messages: Buffer[]): Promise<number> {
  const client = await ImdpClient.connect({
    host: '127.0.0.1',
    port,
    domain: 'b.test',
    tls: { cert: readFileSync(pki.a.cert), key: readFileSync(pki.a.key), ca: readFileSync(pki.caFile) },
    timeout: 60_000,
  });
  const window = 16;
  let ok = 0;
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
    if (a.word !== 'ACCEPT') throw new Error(`refused: ${a.word} ${a.text}`);
    const r = await client.readResult();
    answered++;
    if (r.word === 'OK') ok++;
    await pump();
  }
  await client.done();
  return ok;
}

async function rate(label: string, port: number, pki: Pki, connections: number, perConnection: number): Promise<void> {
  const batches = await Promise.all(Array.from({ length: connections }, async () => Promise.all(Array.from({ length: perConnection }, () => message4k()))));
  const t0 = performance.now();
  const oks = await Promise.all(batches.map((b) => sendMany(port, pki, b)));
  const secs = (performance.now() - t0) / 1000;
  const total = oks.reduce((a, b) => a + b, 0);
  console.log(
    `imdp: ${label}, ${connections} connection(s) x ${perConnection} messages of 4 KB: ${(total / secs).toFixed(0)} messages/s (${total} OK in ${secs.toFixed(2)} s)`,
  );
}

/** Peak RSS (VmHWM, kB) of a process and its descendants, by command name, sampled. */
function rssWatcher(rootPid: () => number[]): { stop(): Map<string, number> } {
  const peaks = new Map<string, number>();
  const sample = () => {
    const pids = new Set(rootPid());
    for (const d of readdirSync('/proc').filter((f) => /^\d+$/.test(f))) {
      try {
        const status = readFileSync(`/proc/${d}/status`, 'utf8');
        const ppid = Number(/PPid:\s+(\d+)/.exec(status)?.[1]);
        if (pids.has(ppid)) pids.add(Number(d));
      } catch {
        // gone
      }
    }
    for (const pid of pids) {
      try {
        const status = readFileSync(`/proc/${pid}/status`, 'utf8');
        const hwm = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0);
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
        const name = cmd.map((c) => c.split('/').pop()).find((c) => c && !['node', 'env'].includes(c) && !c.startsWith('-')) ?? String(pid);
        peaks.set(name, Math.max(peaks.get(name) ?? 0, hwm));
      } catch {
        // gone
      }
    }
  };
  const timer = setInterval(sample, 50);
  return {
    stop() {
      clearInterval(timer);
      sample();
      return peaks;
    },
  };
}

function sendMailConfig(dir: string, pki: Pki, port: number): string {
  const file = join(dir, 'send-mail.toml');
  writeFileSync(
    file,
    `domain = "a.test"\ndns_srv = false\nmax_message_bytes = "2G"\n[tls]\ncertificate = "${pki.a.cert}"\nkey = "${pki.a.key}"\nca = ["${pki.caFile}"]\n[servers]\n"b.test" = "127.0.0.1:${port}"\n`,
  );
  return file;
}

async function sendMailRuns(dir: string, pki: Pki, port: number, runs: number): Promise<void> {
  const cfg = sendMailConfig(dir, pki, port);
  const msg = await message4k();
  const t0 = performance.now();
  for (let i = 0; i < runs; i++) {
    const child = spawn(join(BIN, 'send-mail'), ['--config', cfg], { env, stdio: ['pipe', 'ignore', 'inherit'] });
    child.stdin.end(msg);
    const [code] = await once(child, 'exit');
    if (code !== 0) throw new Error(`send-mail exited ${code}`);
  }
  const secs = (performance.now() - t0) / 1000;
  console.log(`imdp: send-mail, one process per message, 4 KB: ${(runs / secs).toFixed(1)} runs/s (${runs} in ${secs.toFixed(2)} s)`);
}

async function bigOne(dir: string, pki: Pki, server: Listening, label: string): Promise<void> {
  const size = Number(process.env.BENCH_BIG_MB ?? 1024) * 1024 * 1024;
  const file = join(dir, 'big.bin');
  patternFile(file, size);
  const cfg = sendMailConfig(dir, pki, server.port);
  const msgFile = join(dir, 'big.ima');
  const watch = rssWatcher(() => [server.proc.pid!, process.pid]);
  let t0 = performance.now();
  const make = spawn(
    join(BIN, 'make-message'),
    ['--from', 'alice@a.test', '--to', 'bob@b.test', '--subject', 'big', '--text', 'see attachment', '--attach', file, '--output', msgFile],
    { env, stdio: ['ignore', 'ignore', 'inherit'] },
  );
  const [mc] = await once(make, 'exit');
  const makeSecs = (performance.now() - t0) / 1000;
  t0 = performance.now();
  const send = spawn(join(BIN, 'send-mail'), ['--config', cfg, msgFile], { env, stdio: ['ignore', 'pipe', 'inherit'] });
  let result = '';
  send.stdout!.on('data', (d) => (result += d));
  const [sc] = await once(send, 'exit');
  const sendSecs = (performance.now() - t0) / 1000;
  const peaks = watch.stop();
  if (mc !== 0 || sc !== 0) throw new Error(`make-message ${mc}, send-mail ${sc}: ${result}`);
  const mbs = (secs: number) => `${(size / 1e6 / secs).toFixed(0)} MB/s (${secs.toFixed(1)} s)`;
  console.log(
    `imdp: ${size / 1024 / 1024} MiB attachment: make-message to a file ${mbs(makeSecs)}; send-mail FILE -> server-receive -> ${label} ${mbs(sendSecs)}; end to end ${mbs(makeSecs + sendSecs)}; ${result.trim()}`,
  );
  console.log(
    `imdp: peak RSS: ${[...peaks]
      .filter(([n]) => !n.endsWith('.js') && !n.endsWith('.mjs'))
      .map(([n, kb]) => `${n} ${(kb / 1024).toFixed(0)} MB`)
      .join(', ')}`,
  );
  rmSync(msgFile);
  rmSync(file);
}

export async function run(): Promise<void> {
  const dir = join(tmpdir(), `ima-bench-imdp-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  console.log('imdp: figures from a 2-core machine shared with other jobs: expect noise');
  try {
    const pki = makePki(dir);
    const count = Number(process.env.BENCH_MESSAGES ?? 300);
    for (const inProcess of [false, true]) {
      const c = chain(dir, inProcess);
      if (!c) {
        console.log('imdp: in-process handlers: skipped (handle-incoming-mail and give-recipient are not in this build)');
        continue;
      }
      const server = await startServer(dir, pki, c.handler, c.inProcess);
      try {
        const label = `${c.inProcess ? 'in-process' : 'spawned'} ${c.label}`;
        await rate(label, server.port, pki, 1, count);
        await rate(label, server.port, pki, 10, Math.ceil(count / 5));
        if (inProcess || !isProgram('handle-incoming-mail')) await sendMailRuns(dir, pki, server.port, 20);
        if (inProcess || !isProgram('handle-incoming-mail')) await bigOne(dir, pki, server, label);
      } finally {
        await server.stop();
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
