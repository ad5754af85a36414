import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { certCoversDomain } from '../../src/net/tls.js';
import { runBin, runCommand, tempDir } from '../helpers.js';

test('make-cert: a CA, a server certificate and a user certificate that OpenSSL accepts for their purposes', async () => {
  const dir = tempDir();
  const ca = join(dir, 'ca');
  let r = await runBin('make-cert', ['ca', ca]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.toString(), `${join(ca, 'ca.crt')}\n${join(ca, 'ca.key')}\n`);
  assert.equal(statSync(join(ca, 'ca.key')).mode & 0o777, 0o600);
  r = await runBin('make-cert', ['server', '--ca', ca, '--out', dir, 'b.test', 'mx.b.test', 'bücher.test']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(statSync(join(dir, 'b.test.key')).mode & 0o777, 0o600);
  const x = new X509Certificate(readFileSync(join(dir, 'b.test.crt')));
  assert.ok(certCoversDomain(x, 'b.test'));
  assert.ok(certCoversDomain(x, 'mx.b.test'));
  assert.ok(certCoversDomain(x, 'bücher.test'), 'IDN compared in ASCII form');
  assert.ok(!certCoversDomain(x, 'a.test'));
  assert.ok(x.verify(new X509Certificate(readFileSync(join(ca, 'ca.crt'))).publicKey));
  assert.deepEqual(x.keyUsage.sort(), ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
  for (const purpose of ['sslserver', 'sslclient']) {
    const v = await runCommand('openssl', ['verify', '-purpose', purpose, '-CAfile', join(ca, 'ca.crt'), join(dir, 'b.test.crt')]);
    assert.equal(v.code, 0, `${purpose}: ${v.stdout}${v.stderr}`);
  }
  r = await runBin('make-cert', ['user', '--ca', ca, 'bob@b.test']);
  assert.equal(r.code, 0, r.stderr);
  const u = join(ca, 'bob@b.test.crt');
  assert.equal((await runCommand('openssl', ['verify', '-purpose', 'sslclient', '-CAfile', join(ca, 'ca.crt'), u])).code, 0);
  assert.notEqual(
    (await runCommand('openssl', ['verify', '-purpose', 'sslserver', '-CAfile', join(ca, 'ca.crt'), u])).code,
    0,
    'a user certificate is not a server certificate',
  );
  const text = (await runCommand('openssl', ['x509', '-in', u, '-noout', '-text'])).stdout.toString();
  assert.match(text, /email:bob@b\.test/);
  assert.match(text, /CA:FALSE/);
});

test('make-cert: --not-before and --days make an expired certificate; existing files are kept', async () => {
  const dir = tempDir();
  assert.equal((await runBin('make-cert', ['ca', dir])).code, 0);
  const r = await runBin('make-cert', ['server', '--ca', dir, '--not-before', '2020-01-01T00:00:00Z', '--days', '2', 'old.test']);
  assert.equal(r.code, 0, r.stderr);
  const v = await runCommand('openssl', ['verify', '-CAfile', join(dir, 'ca.crt'), join(dir, 'old.test.crt')]);
  assert.notEqual(v.code, 0);
  assert.match(v.stdout.toString() + v.stderr, /expired/);
  const again = await runBin('make-cert', ['ca', dir]);
  assert.equal(again.code, 73);
  assert.match(again.stderr, /already exists/);
});

test('make-cert: bad input is a usage error naming it, and writes nothing', async () => {
  const dir = tempDir();
  let r = await runBin('make-cert', ['server', '--ca', dir, 'not a domain']);
  assert.equal(r.code, 64);
  assert.match(r.stderr, /not a domain/);
  r = await runBin('make-cert', ['server', '--ca', dir, 'a.test']);
  assert.equal(r.code, 66, 'no CA there');
  assert.match(r.stderr, /ca\.crt: no such file/);
  r = await runBin('make-cert', ['frobnicate']);
  assert.equal(r.code, 64);
  r = await runBin('make-cert', ['user', '--ca', dir, '../evil']);
  assert.equal(r.code, 64);
  // The config's bound holds for --days too: 1e12 days gave notAfter "Bad time value" and exit 0.
  assert.equal((await runBin('make-cert', ['ca', join(dir, 'ca')])).code, 0);
  for (const days of ['1e12', '36501', '0']) {
    r = await runBin('make-cert', ['server', '--ca', join(dir, 'ca'), '--days', days, 'a.test']);
    assert.equal(r.code, 64, `--days ${days}: ${r.stderr}`);
    assert.match(r.stderr, /--days \d+: must be a whole number of days, 1 to 36500/);
  }
  // Nor past the year 9999 that X.509 times end with, nor before 1950.
  for (const notBefore of ['9999-01-01T00:00:00Z', '1949-12-31T00:00:00Z']) {
    r = await runBin('make-cert', ['server', '--ca', join(dir, 'ca'), '--not-before', notBefore, '--days', '36500', 'a.test']);
    assert.equal(r.code, 64, `--not-before ${notBefore}: ${r.stderr}`);
    assert.match(r.stderr, /the validity must lie between the years 1950 and 9999/);
  }
  assert.deepEqual(readdirSync(join(dir, 'ca')).sort(), ['ca.crt', 'ca.key'], 'no certificate written');
  r = await runBin('make-cert', ['server', '--ca', join(dir, 'ca'), '--days', '36500', 'a.test']);
  assert.equal(r.code, 0, r.stderr);
  assert.match((await runCommand('openssl', ['x509', '-in', join(dir, 'ca', 'a.test.crt'), '-noout', '-enddate'])).stdout.toString(), /notAfter=.* 21\d\d GMT/);
});

test('make-cert: a user address with an IDN domain gets its A-label and a UTF8String CN, from a CA with a non-ASCII name; a non-ASCII local part is refused', async () => {
  const dir = tempDir();
  const ca = join(dir, 'ca');
  assert.equal((await runBin('make-cert', ['ca', '--name', 'Bücher CA', ca])).code, 0);
  const caCert = new X509Certificate(readFileSync(join(ca, 'ca.crt')));
  assert.equal(caCert.subject, 'CN=Bücher CA\nO=IMA private federation');
  let r = await runBin('make-cert', ['user', '--ca', ca, '--out', dir, 'jo_se@Bücher.example']);
  assert.equal(r.code, 0, r.stderr);
  const file = join(dir, 'jo_se@xn--bcher-kva.example.crt');
  const x = new X509Certificate(readFileSync(file));
  assert.equal(x.subject, 'CN=jo_se@xn--bcher-kva.example\nO=IMA private federation');
  assert.equal(x.issuer, caCert.subject);
  assert.equal(x.subjectAltName, 'email:jo_se@xn--bcher-kva.example');
  assert.ok(x.checkIssued(caCert) && x.verify(caCert.publicKey), 'issued and signed by the CA');
  const text = (await runCommand('openssl', ['x509', '-in', file, '-noout', '-text', '-nameopt', 'utf8'])).stdout.toString();
  assert.match(text, /Issuer: CN=Bücher CA, O=IMA private federation/);
  assert.match(text, /Subject: CN=jo_se@xn--bcher-kva\.example, O=IMA private federation/);
  assert.match(text, /email:jo_se@xn--bcher-kva\.example/);
  // "@" and "_" are not PrintableString characters: the names are UTF8Strings.
  const asn1 = (await runCommand('openssl', ['asn1parse', '-in', file])).stdout.toString();
  assert.match(asn1, /UTF8STRING +:jo_se@xn--bcher-kva\.example/);
  assert.doesNotMatch(asn1, /PRINTABLESTRING/);
  const v = await runCommand('openssl', ['verify', '-purpose', 'sslclient', '-CAfile', join(ca, 'ca.crt'), file]);
  assert.equal(v.code, 0, `${v.stdout}${v.stderr}`);
  for (const [address, local] of [
    ['用户@b.test', '用户'],
    ['josé@Bücher.example', 'josé'],
  ]) {
    r = await runBin('make-cert', ['user', '--ca', ca, '--out', dir, address]);
    assert.equal(r.code, 64, `${address}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`${address.replace(/\./g, '\\.')}: the local part "${local}" is not ASCII`));
  }
  assert.deepEqual(readdirSync(dir).sort(), ['ca', 'jo_se@xn--bcher-kva.example.crt', 'jo_se@xn--bcher-kva.example.key'], 'nothing written for them');
});

test('make-cert: --out DIR that does not exist yet is created, readable by its owner only', async () => {
  const dir = tempDir();
  const ca = join(dir, 'ca');
  assert.equal((await runBin('make-cert', ['ca', ca])).code, 0);
  const out = join(dir, 'new', 'tls');
  const r = await runBin('make-cert', ['user', '--ca', ca, '--out', out, 'bob']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.toString(), `${join(out, 'bob.crt')}\n${join(out, 'bob.key')}\n`);
  assert.equal(statSync(out).mode & 0o777, 0o700);
});
