// ImdpClient against a peer that greets and then never reads: every write
// path must give up with a temporary failure instead of waiting forever.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import tls from 'node:tls';
import { ImdpClient } from '../../src/imdp/client.js';
import { certs, clientTls, pki } from '../imdp-fixture.js';

test('ImdpClient: a server that never reads (zero receive window) makes sendData a TEMPFAIL after the timeout, not a hang', async () => {
  const held: tls.TLSSocket[] = [];
  const server = tls.createServer({ cert: readFileSync(certs.b.cert), key: readFileSync(certs.b.key), ca: [pki.ca.certPem], requestCert: true }, (s) => {
    held.push(s);
    s.on('error', () => {});
    s.write('IMDP 1 b.test\n');
    s.pause();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  const c = await ImdpClient.connect({ host: '127.0.0.1', port, domain: 'b.test', tls: clientTls(), timeout: 1000 });
  const size = 64 * 1024 * 1024;
  const started = Date.now();
  const chunks = (async function* () {
    for (let n = 0; n < size; n += 1 << 20) yield Buffer.alloc(1 << 20);
  })();
  c.sendMail(Buffer.from('from: alice@a.test\n'), size);
  await assert.rejects(c.sendData(chunks, size), (e: Error & { temporary?: boolean }) => {
    assert.match(e.message, /b\.test: the server took no data for 1 s/);
    return true;
  });
  assert.ok(Date.now() - started < 15_000);
  c.close();
  for (const s of held) s.destroy();
  server.close();
});
