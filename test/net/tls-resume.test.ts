import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import type { TLSSocket } from 'node:tls';
import { createLog } from '../../src/log.js';
import { LineReader } from '../../src/net/lines.js';
import { serve } from '../../src/net/listen.js';
import { certCoversDomain, connectTls, contextOptions, loadTlsMaterial } from '../../src/net/tls.js';
import { tempDir } from '../helpers.js';
import { Pki } from '../pki.js';

const dir = tempDir();
const pki = new Pki(dir);
const server = pki.server('b.test');
const client = pki.server('a.test');

test('tls: a second connection resumes the session (ticket) and the server still sees the verified client certificate; a session is not resumed with other CAs', async () => {
  const stop = new AbortController();
  const m = loadTlsMaterial({ certificate: server.cert, key: server.key, ca: [pki.caFile], configFile: 'test.toml' });
  let port = 0;
  const { done } = await new Promise<{ done: Promise<void> }>((res) => {
    const d: Promise<void> = serve(
      { mode: 'listen', host: '127.0.0.1', port: 0 },
      { tls: contextOptions(m), clientCert: 'required', limits: { maxConnections: 10, maxPerAddress: 5, handshakeTimeout: 5000, shutdownTimeout: 5000 } },
      {
        async session(socket: TLSSocket, peer) {
          socket.write(`HELLO ${peer.authorized} ${peer.cert && certCoversDomain(peer.cert, 'a.test') ? 'a.test' : '?'} ${socket.isSessionReused()}\n`);
          socket.end();
          await new Promise((r) => socket.once('close', r));
        },
        refuse(socket, reason) {
          socket.end(`BYE ${reason}\n`);
        },
      },
      {
        log: createLog(new PassThrough().resume(), 'test', 'debug'),
        signal: stop.signal,
        onListening: (a: AddressInfo) => ((port = a.port), res({ done: d })),
      },
    );
  });
  const greet = async (ca = pki.caFile) => {
    const socket = await connectTls({
      host: '127.0.0.1',
      port,
      name: 'b.test',
      tls: { cert: readFileSync(client.cert), key: readFileSync(client.key), ca: readFileSync(ca) },
      timeout: 10_000,
      where: 'test',
    });
    const reused = socket.isSessionReused();
    const line = await new LineReader(socket, { maxLine: 200, idleTimeout: 10_000, dataTimeout: 10_000 }).readLine();
    // TLS 1.3 tickets come after the handshake: let the server close first.
    if (!socket.closed) await new Promise((r) => socket.once('close', r));
    return { line, reused };
  };
  const first = await greet();
  assert.deepEqual(first, { line: 'HELLO true a.test false', reused: false });
  const second = await greet();
  assert.deepEqual(second, { line: 'HELLO true a.test true', reused: true });
  // The same client trusting other CAs only: the server's certificate is not
  // trusted, and the session verified against our CA must not stand in for it.
  const stranger = new Pki(tempDir());
  await assert.rejects(greet(stranger.caFile), (e: Error & { status?: string }) => e.status === '4.7.5');
  // Back to our CA: trusted again (the kept context and ticket were not replaced by the refused one).
  assert.deepEqual(await greet(), { line: 'HELLO true a.test true', reused: true });
  stop.abort();
  await done;
});
