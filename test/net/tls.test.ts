// Client certificates as ima(7) asks for them, checked by a real
// server-receive: clientAuth required (an absent extendedKeyUsage is not
// "any purpose"), and a chain through a CA:false issuer refused for that reason.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { type Server, config, connect, pki, startServer } from '../imdp-fixture.js';

let s: Server;
after(() => s?.stop());

test('server-receive refuses a client certificate with no extendedKeyUsage at all, saying so', async () => {
  s = await startServer(config());
  const noEku = pki.odd('a-no-eku', { commonName: 'a.test', dnsNames: ['a.test'], eku: 'none' });
  await assert.rejects(connect(s.port, noEku), (e: Error) => /it has no extendedKeyUsage, and ima\(7\) requires one naming clientAuth/.test(e.message));
  const serverOnly = pki.odd('a-server-only', { commonName: 'a.test', dnsNames: ['a.test'], eku: ['serverAuth'] });
  await assert.rejects(connect(s.port, serverOnly), (e: Error) => /lacks clientAuth/.test(e.message));
  const good = pki.odd('a-client', { commonName: 'a.test', dnsNames: ['a.test'], eku: ['clientAuth'] });
  const c = await connect(s.port, good);
  await c.done();
});

test('server-receive names a CA:false issuer as the reason, not a missing clientAuth', async () => {
  const mid = pki.odd('mid-not-ca', { commonName: 'mid.test', dnsNames: ['mid.test'], eku: ['serverAuth', 'clientAuth'], keyCertSign: true });
  const leaf = pki.odd('a-under-mid', { commonName: 'a.test', dnsNames: ['a.test'], eku: ['clientAuth'], issuer: mid }, true);
  await assert.rejects(connect(s.port, leaf), (e: Error) => {
    assert.match(e.message, /its issuer \(CN=mid\.test\) is not a CA \(basicConstraints CA:false\)/);
    assert.doesNotMatch(e.message, /lacks clientAuth/);
    return true;
  });
});
