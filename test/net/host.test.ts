import assert from 'node:assert/strict';
import { test } from 'node:test';
import { serverAddress } from '../../src/net/host.js';

test('serverAddress: a host name, an IPv4 address or a bracketed IP, with or without a port', () => {
  assert.deepEqual(serverAddress('mx.b.test'), { host: 'mx.b.test', port: undefined });
  assert.deepEqual(serverAddress('localhost:2525'), { host: 'localhost', port: 2525 });
  assert.deepEqual(serverAddress('192.0.2.7:25'), { host: '192.0.2.7', port: 25 });
  assert.deepEqual(serverAddress('[2001:db8::1]:4690'), { host: '2001:db8::1', port: 4690 });
  assert.deepEqual(serverAddress('[::1]'), { host: '::1', port: undefined });
  assert.deepEqual(serverAddress('mx.b.test.'), { host: 'mx.b.test.', port: undefined });
});

test('serverAddress: anything else is one line naming what is wrong', () => {
  assert.equal(serverAddress('mail b.test'), 'expected HOST or HOST:PORT, not "mail b.test"');
  assert.equal(serverAddress('2001:db8::1'), 'expected HOST or HOST:PORT, not "2001:db8::1"'); // an IPv6 address needs brackets
  assert.equal(serverAddress('b.test:'), 'expected HOST or HOST:PORT, not "b.test:"');
  assert.equal(serverAddress(''), 'expected HOST or HOST:PORT, not ""');
  assert.equal(serverAddress('b.test:0'), 'port 0 is not 1-65535');
  assert.equal(serverAddress('b.test:65536'), 'port 65536 is not 1-65535');
  assert.equal(serverAddress('[1.2.3]:25'), '1.2.3: not an IP address');
  assert.equal(serverAddress('-bad-.test'), '-bad-.test: not a host name');
  assert.equal(serverAddress('under_score.test'), 'under_score.test: not a host name');
  assert.equal(serverAddress(`${'a'.repeat(64)}.test`), `${'a'.repeat(64)}.test: not a host name`);
});
