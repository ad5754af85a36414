import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { after, before, test } from 'node:test';
import { Failure } from '../../src/failure.js';
import { Dns, dnsServerProblem, orderSrv } from '../../src/net/dns.js';
import { type DnsServer, startDns } from '../dns-fixture.js';

let server: DnsServer;
before(async () => {
  server = await startDns({
    mx: [
      ['b.test', 'mx2.b.test', 20],
      ['b.test', 'mx1.b.test', 10],
      ['null.test', '.', 0],
    ],
    srv: [
      ['_imdp._tcp.b.test', 'imdp-low.b.test', 4690, 20, 0],
      ['_imdp._tcp.b.test', 'imdp-a.b.test', 4691, 10, 3],
      ['_imdp._tcp.b.test', 'imdp-b.b.test', 4692, 10, 1],
      ['_imdp._tcp.legacy.test', '.', 0, 0, 0],
    ],
    hosts: [
      ['mx1.b.test', '127.0.0.1'],
      ['mx2.b.test', '127.0.0.2', '::1'],
      ['implicit.test', '127.0.0.3'],
    ],
    txt: [['s1._domainkey.a.test', `v=DKIM1; k=rsa; p=${'A'.repeat(400)}`]],
  });
});
after(() => server?.stop());

const dns = () => new Dns([server.server], 2000);

test('dns: MX hosts in preference order; no MX means the domain itself (implicit MX); null MX and NXDOMAIN are permanent', async () => {
  assert.deepEqual(await dns().mx('b.test'), { hosts: ['mx1.b.test', 'mx2.b.test'], implicit: false });
  assert.deepEqual(await dns().mx('implicit.test'), { hosts: ['implicit.test'], implicit: true });
  for (const [domain, why] of [
    ['null.test', /null MX/],
    ['nowhere.test', /no such domain/],
  ] as const) {
    await assert.rejects(dns().mx(domain), (e: Failure) => e instanceof Failure && !e.temporary && why.test(e.message));
  }
});

test('dns: addresses come from the configured server, A then AAAA; TXT strings are joined', async () => {
  assert.deepEqual(await dns().addresses('mx2.b.test'), ['127.0.0.2', '::1']);
  assert.deepEqual(await dns().addresses('127.0.0.9'), ['127.0.0.9']);
  assert.deepEqual(await dns().addresses('none.b.test'), []);
  // Without configured servers the system's resolver answers, /etc/hosts included: IPv4 first.
  assert.equal((await new Dns().addresses('localhost'))[0], '127.0.0.1');
  assert.deepEqual(await new Dns().addresses('127.0.0.9'), ['127.0.0.9']);
  assert.deepEqual(await dns().txt('s1._domainkey.a.test'), [`v=DKIM1; k=rsa; p=${'A'.repeat(400)}`]);
});

test('dns: SRV targets by priority; a lone "." target means no IMDP; no record is absent', async () => {
  const s = await dns().imdp('b.test');
  assert.equal(s.kind, 'targets');
  if (s.kind !== 'targets') return;
  assert.deepEqual(s.targets.map((t) => t.host).slice(2), ['imdp-low.b.test']);
  assert.deepEqual(new Set(s.targets.slice(0, 2).map((t) => `${t.host}:${t.port}`)), new Set(['imdp-a.b.test:4691', 'imdp-b.b.test:4692']));
  assert.deepEqual(await dns().imdp('legacy.test'), { kind: 'none' });
  assert.deepEqual(await dns().imdp('c.test'), { kind: 'absent' });
});

test('dns: RFC 2782 weights: within a priority, first picks follow the weights (3:1), weight 0 only last', async () => {
  const records = [
    { name: 'zero', priority: 10, weight: 0 },
    { name: 'a', priority: 10, weight: 3 },
    { name: 'b', priority: 10, weight: 1 },
    { name: 'low', priority: 20, weight: 100 },
  ];
  const first = { a: 0, b: 0, zero: 0 } as Record<string, number>;
  for (let i = 0; i < 4000; i++) {
    const order = orderSrv(records).map((r) => r.name);
    assert.equal(order[3], 'low');
    first[order[0]]++;
    // Weight 0 goes last in its priority (it is picked first only on a draw of exactly 0).
    assert.equal(order[2], 'zero');
  }
  assert.ok(first.a > 2700 && first.a < 3300, `a first ${first.a} of 4000, expected about 3000`);
  assert.ok(first.b > 700 && first.b < 1300, `b first ${first.b} of 4000`);
  // The draw is the RFC's: a draw of 0 picks the weight-0 record, the top picks the last.
  assert.deepEqual(
    orderSrv(records, () => 0).map((r) => r.name),
    ['zero', 'a', 'b', 'low'],
  );
});

test('dns: a server that does not answer is temporary trouble, never "no such domain"', async () => {
  const silent = createSocket('udp4');
  silent.bind(0, '127.0.0.1');
  await once(silent, 'listening');
  const d = new Dns([`127.0.0.1:${silent.address().port}`], 300);
  await assert.rejects(d.mx('b.test'), (e: Failure) => e instanceof Failure && e.temporary && /MX lookup failed \(ETIMEOUT\)/.test(e.message));
  await assert.rejects(d.imdp('b.test'), (e: Failure) => e instanceof Failure && e.temporary);
  silent.close();
});

test('dns: dns_servers entries are checked', () => {
  for (const ok of ['127.0.0.1', '127.0.0.1:5353', '::1', '[::1]:53']) assert.equal(dnsServerProblem(ok), undefined, ok);
  for (const bad of ['localhost', '127.0.0.1:0', '1.2.3.4:99999', '']) assert.match(dnsServerProblem(bad)!, /not an IP address/, bad);
});
