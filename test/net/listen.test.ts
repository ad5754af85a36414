import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { once } from 'node:events';
import net from 'node:net';
import { PassThrough } from 'node:stream';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import tls, { type TLSSocket } from 'node:tls';
import { LineReader } from '../../src/net/lines.js';
import { type Settings, parseHostPort, serve } from '../../src/net/listen.js';
import { createLog } from '../../src/log.js';
import { certCoversDomain, contextOptions, fingerprint256, loadTlsMaterial } from '../../src/net/tls.js';
import { EXPIRED, Pki } from '../pki.js';
import { tempDir } from '../helpers.js';

const dir = tempDir();
const pki = new Pki(dir);
const other = new Pki(dir, 'other');
const server = pki.server('b.test');
const client = pki.server('a.test');
const expired = pki.server('old.test', { validity: EXPIRED });
const stranger = other.server('a.test', { file: 'stranger' });
const user = pki.user('bob');
const publicStyle = pki.server('a.test', { file: 'public-style', serverAuthOnly: true });

function settings(limits: Partial<Settings['limits']> = {}): Settings {
  const m = loadTlsMaterial({ certificate: server.cert, key: server.key, ca: [pki.caFile], configFile: 'test.toml' });
  return {
    tls: contextOptions(m),
    clientCert: 'required',
    limits: { maxConnections: 10, maxPerAddress: 5, handshakeTimeout: 5000, shutdownTimeout: 5000, ...limits },
  };
}

/** A server whose session greets with the peer's verified certificate names, then echoes lines. */
async function start(limits: Partial<Settings['limits']> = {}) {
  const stop = new AbortController();
  const logs = new PassThrough();
  let port = 0;
  let done!: Promise<void>;
  await new Promise<void>((res) => {
    done = serve(
      { mode: 'listen', host: '127.0.0.1', port: 0 },
      settings(limits),
      {
        async session(socket, peer, stopping) {
          socket.write(`HELLO ${certCoversDomain(peer.cert!, 'a.test') ? 'a.test' : '?'} ${fingerprint256(peer.cert!).length}\n`);
          const r = new LineReader(socket, { maxLine: 100, idleTimeout: 2000, dataTimeout: 2000 });
          for (;;) {
            const line = await r.readLine().catch(() => null);
            if (line === null) break;
            socket.write(`ECHO ${line}\n`);
            if (stopping.aborted) break;
          }
          socket.end();
        },
        refuse(socket, reason) {
          socket.write(`BYE ${reason}\n`);
        },
      },
      {
        log: createLog(process.env.DEBUG_TEST ? process.stderr : logs, 'test', 'debug'),
        signal: stop.signal,
        onListening: (a: AddressInfo) => {
          port = a.port;
          res();
        },
      },
    );
  });
  return { port, stop, done };
}

function connect(port: number, files?: { cert: string; key: string }): Promise<{ socket: TLSSocket; first: string }> {
  return new Promise((res, rej) => {
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      servername: 'b.test',
      ca: pki.ca.certPem,
      ...(files ? { cert: readFileSync(files.cert), key: readFileSync(files.key) } : {}),
    });
    let buf = '';
    socket.on('data', (d) => {
      buf += d;
      const i = buf.indexOf('\n');
      if (i !== -1) res({ socket, first: buf.slice(0, i) });
    });
    socket.on('error', (e) => rej(e));
    socket.on('close', () => res({ socket, first: buf }));
  });
}

test('listen: a client with a certificate from the CA gets the session, with its verified certificate', async () => {
  const s = await start();
  const { socket, first } = await connect(s.port, client);
  assert.equal(first, 'HELLO a.test 64');
  socket.end();
  s.stop.abort();
  await s.done;
});

for (const [what, files, expect] of [
  ['no certificate', undefined, /^BYE no client certificate.*public CAs stopped issuing clientAuth certificates in 2026.*own CA/],
  ['a certificate from an unknown CA', stranger, /^BYE client certificate rejected.*does not chain to a CA.*own CA/],
  [
    'a certificate without clientAuth, as public CAs issue since 2026',
    publicStyle,
    /^BYE client certificate rejected.*lacks clientAuth.*public CAs stopped issuing clientAuth certificates in 2026/,
  ],
  ['an expired certificate', expired, /^BYE client certificate rejected.*expired/],
  ['a user certificate (no serverAuth, still clientAuth: accepted by TLS)', user, /^HELLO/],
] as const) {
  test(`listen: ${what}`, async () => {
    const s = await start();
    const { socket, first } = await connect(s.port, files);
    assert.match(first, expect);
    socket.destroy();
    s.stop.abort();
    await s.done;
  });
}

test('listen: connections over the per-address limit are dropped, others go on', async () => {
  const s = await start({ maxPerAddress: 2 });
  const a = await connect(s.port, client);
  const b = await connect(s.port, client);
  const c = await connect(s.port, client).catch((e: Error) => ({ first: `error ${e.message}`, socket: undefined }));
  assert.ok(!c.first.startsWith('HELLO'), c.first);
  a.socket.write('ping\n');
  const [d] = await Promise.all([new Promise<string>((res) => a.socket.on('data', (x) => res(String(x))))]);
  assert.equal(d, 'ECHO ping\n');
  a.socket.end();
  b.socket.end();
  s.stop.abort();
  await s.done;
});

/** A raw TCP connection that never starts TLS; resolves once connected. */
async function silent(port: number, localAddress = '127.0.0.1'): Promise<net.Socket> {
  const s = net.connect({ port, host: '127.0.0.1', localAddress });
  s.on('error', () => {});
  await once(s, 'connect');
  return s;
}

/** Resolves when the socket closes; rejects after `ms`. */
function closedWithin(s: net.Socket, ms: number): Promise<void> {
  if (s.destroyed && s.closed) return Promise.resolve();
  return new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error(`still open after ${ms} ms`)), ms);
    s.once('close', () => {
      clearTimeout(t);
      res();
    });
  });
}

test('listen: silent TCP connections count from the accept: those beyond max_connections are closed at once, not after the handshake timeout', async () => {
  const s = await start({ maxConnections: 3, maxPerAddress: 10, handshakeTimeout: 60_000 });
  const held = [await silent(s.port, '127.0.0.2'), await silent(s.port, '127.0.0.3'), await silent(s.port, '127.0.0.4')];
  const over = [await silent(s.port), await silent(s.port, '127.0.0.5')];
  await Promise.all(over.map((o) => closedWithin(o, 5000)));
  assert.ok(
    held.every((h) => !h.destroyed),
    'the first three are still open',
  );
  for (const h of held) h.destroy();
  s.stop.abort();
  await s.done;
});

test('listen: one greedy address cannot take the last quarter of the slots; a normal client still gets in', async () => {
  const s = await start({ maxConnections: 8, maxPerAddress: 8, handshakeTimeout: 60_000 });
  const greedy: net.Socket[] = [];
  for (let i = 0; i < 8; i++) greedy.push(await silent(s.port, '127.0.0.2'));
  await Promise.all(greedy.slice(6).map((g) => closedWithin(g, 5000)));
  const { socket, first } = await connect(s.port, client);
  assert.equal(first, 'HELLO a.test 64', 'the normal client from another address is served');
  socket.end();
  for (const g of greedy) g.destroy();
  s.stop.abort();
  await s.done;
});

test('listen: stopping lets an open session finish, then resolves', async () => {
  const s = await start();
  const a = await connect(s.port, client);
  s.stop.abort();
  a.socket.write('last\n');
  const got = await new Promise<string>((res) => a.socket.on('data', (x) => res(String(x))));
  assert.equal(got, 'ECHO last\n');
  await s.done;
});

test('parseHostPort', () => {
  assert.deepEqual(parseHostPort('127.0.0.1:4690'), { host: '127.0.0.1', port: 4690 });
  assert.deepEqual(parseHostPort('[::1]:25'), { host: '::1', port: 25 });
  assert.deepEqual(parseHostPort(':4690'), { host: '::', port: 4690 });
  assert.throws(() => parseHostPort('localhost'), /ADDRESS:PORT/);
});
