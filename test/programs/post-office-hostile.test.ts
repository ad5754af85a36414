// post-office against clients that go away, read nothing, drip bytes or
// hoard connections: each must end in time and leave room for others.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { type TLSSocket, createServer } from 'node:tls';
import { type Listening, runBin, startListening, testEnv } from '../helpers.js';
import { converse, deliver, dir, open, pki, poConfig, server, until } from '../imrp-fixture.js';

const big = Buffer.alloc(8 * 1024 * 1024, 'x');
writeFileSync(join(dir, 'big.bin'), big);

// Messages larger together than the kernel's socket buffers, so a client that reads nothing holds the server up.
// No test here deletes them (the fetches are cut short), so each finds them in new/.
before(() => deliver('bob', 3, ['-a', 'big.bin']));

const servers: Listening[] = [];
after(() => Promise.all(servers.map((s) => s.stop())));
async function postOffice(extra: string): Promise<Listening> {
  const s = await startListening('post-office', ['--config', await poConfig(extra), '--listen', '127.0.0.1:0']);
  servers.push(s);
  return s;
}

/** Log in, FETCH NEW, and stop reading once the first message has begun. */
async function stallInFetch(port: number) {
  const client = await open(port);
  const fetching = until(client, /MESSAGE \S+ \d+\n/);
  client.write('LOGIN bob sesame\nFETCH NEW\n');
  await fetching;
  client.pause();
  return client;
}

async function nextIsServed(s: Listening): Promise<void> {
  const next = await open(s.port);
  assert.match(await until(next, /\n/), /^IMRP 1 b\.test\n/, 'the next connection from that address is served');
  next.destroy();
}

test('post-office: a client that stops reading in the middle of FETCH is cut after timeouts.data, freeing its slot', async () => {
  const s = await postOffice('[limits]\nmax_connections_per_address = 1\n[timeouts]\ndata = "1s"\n');
  const staller = await stallInFetch(s.port);
  await s.waitLog(/failed while sending: peer took no data for 1 s/);
  await nextIsServed(s);
  staller.destroy();
});

test('post-office: a client that drops in the middle of FETCH frees its slot at once; SIGTERM then ends promptly', async () => {
  const s = await postOffice('[limits]\nmax_connections_per_address = 1\n[timeouts]\ndata = "60s"\nshutdown = "60s"\n');
  const dropper = await stallInFetch(s.port);
  dropper.destroy();
  await s.waitLog(/failed while sending/);
  await nextIsServed(s);
  const exited = once(s.proc, 'exit');
  s.proc.kill('SIGTERM');
  const timer = setTimeout(() => s.proc.kill('SIGKILL'), 10_000);
  const [code, signal] = await exited;
  clearTimeout(timer);
  assert.equal(signal, null, 'ended by SIGTERM well before the 60 s shutdown timeout');
  assert.equal(code, 0);
});

test('post-office: a client that takes a FETCH a trickle at a time is cut at limits.min_data_rate, though it never stalls for timeouts.data', async () => {
  const s = await postOffice('[limits]\nmin_data_rate = "10M"\n[timeouts]\ndata = "60s"\ncommand = "1s"\n');
  const slow = await stallInFetch(s.port);
  // 16 KiB every 100 ms: at most 160 KiB/s, whatever the machine's load.
  const t = setInterval(() => slow.read(16 * 1024), 100);
  slow.on('close', () => clearInterval(t));
  try {
    await s.waitLog(/failed while sending: peer took data slower than 10485760 bytes\/s/);
  } finally {
    clearInterval(t);
    slow.destroy();
  }
});

/** Send `text` one byte every `every` ms until the connection closes; what the server said. */
function drip(s: TLSSocket, text: string, every: number): Promise<string> {
  let i = 0;
  const t = setInterval(() => {
    if (!s.destroyed) s.write(text[i++ % text.length]);
  }, every);
  return until(s, /^BYE .*\n/m).finally(() => clearInterval(t));
}

test('post-office: a command dripped a byte at a time is cut at timeouts.command, though no read waits the idle time', async () => {
  const s = await postOffice('[timeouts]\nidle = "2s"\ncommand = "1s"\n');
  const c = await open(s.port);
  assert.match(await drip(c, 'LOGIN bob sesame\n'.repeat(100), 200), /^BYE no line end within 1 s$/m);
  c.destroy();
});

test('post-office: a client busy with commands but not logging in is cut at timeouts.login', async () => {
  const s = await postOffice('[timeouts]\nidle = "5s"\nlogin = "1s"\n');
  const c = await open(s.port);
  const said = await drip(c, 'FOLDERS\n', 20);
  assert.match(said, /^NO log in first$/m);
  assert.match(said, /^BYE no login within 1 s$/m);
  c.destroy();
});

/** A TLS server that runs `talk` on each connection (a hostile post-office). */
async function fakeServer(talk: (s: TLSSocket) => void): Promise<{ port: number; close(): void }> {
  const held: TLSSocket[] = [];
  const srv = createServer({ cert: readFileSync(server.cert), key: readFileSync(server.key) }, (s) => {
    held.push(s);
    s.on('error', () => {});
    talk(s);
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  return {
    port: (srv.address() as { port: number }).port,
    close() {
      for (const s of held) s.destroy();
      srv.close();
    },
  };
}

async function fetchFrom(port: number, extra: string) {
  const cfg = join(dir, `fetch-${port}.toml`);
  writeFileSync(cfg, `server = "127.0.0.1"\nserver_name = "b.test"\nport = ${port}\nca = ["${pki.caFile}"]\nuser = "bob"\n${extra}`);
  const started = Date.now();
  const r = await runBin('fetch-mail', ['--config', cfg, join(dir, `fetched-${port}`)], { env: testEnv({ IMA_PASSWORD: 'sesame' }) });
  return { ...r, seconds: (Date.now() - started) / 1000 };
}

test('fetch-mail: a silent server ends the run with exit 75 and one line', async () => {
  const srv = await fakeServer(() => {});
  const r = await fetchFrom(srv.port, 'timeout = "1s"\n');
  srv.close();
  assert.equal(r.code, 75, r.stderr);
  assert.match(r.stderr, /^fetch-mail: 127\.0\.0\.1:\d+: no answer for 1 s\n$/);
});

test('fetch-mail: a server dripping a message a byte at a time is given up at the deadline: exit 75, one line', async () => {
  const srv = await fakeServer((s) => {
    s.write('IMRP 1 drip\n');
    let timer: NodeJS.Timeout | undefined;
    s.on('data', (d: Buffer) => {
      if (/LOGIN/.test(String(d))) s.write('OK logged in\n');
      if (/FETCH NEW/.test(String(d))) {
        s.write('MESSAGE 12345678-1234-4234-8234-123456789abc 100000\n');
        timer = setInterval(() => s.write('x'), 200);
      }
    });
    s.on('close', () => clearInterval(timer));
  });
  const r = await fetchFrom(srv.port, 'timeout = "1s"\ndeadline = "2s"\n');
  srv.close();
  assert.equal(r.code, 75, r.stderr);
  assert.match(r.stderr, /^fetch-mail: 127\.0\.0\.1:\d+: not done within the deadline of 2 s \(deadline in [^\n]*fetch-\d+\.toml\)\n$/);
  assert.ok(r.seconds < 15, `${r.seconds} s`);
});

test('post-office: an over-long or malformed line is answered ERROR and the session goes on; past max_errors, BYE', async () => {
  const s = await postOffice('[limits]\nmax_errors = 2\n');
  const long = 'A'.repeat(1200);
  const got = await converse(s.port, [long, 'LIST\r', 'LOGIN bob sesame', 'QUIT'], /^BYE/m);
  assert.match(
    got,
    /^IMRP 1 b\.test\nERROR line longer than 1000 bytes\nERROR control character in line \(lines end with LF alone\)\nOK logged in as bob\nBYE bye\n$/,
  );
  const many = await converse(s.port, [long, 'LIST\r', long, 'LOGIN bob sesame'], /^BYE/m);
  assert.match(many, /^(ERROR .*\n){3}BYE too many errors\n$/m);
  assert.doesNotMatch(many, /logged in/);
  // A line with no end in sight is not read forever.
  const endless = await open(s.port);
  const ended = until(endless, /^BYE/m);
  endless.write('A'.repeat(2 * 1024 * 1024));
  assert.match(await ended, /^BYE line longer than 1000 bytes\n$/m);
  endless.destroy();
});
