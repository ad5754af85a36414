// DKIM signatures of outgoing mail (src/smtp/dkim.ts), checked with mailauth's
// verifier against the public keys.
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { it, mock } from 'node:test';
import { dkimVerify } from 'mailauth';
import { dkimRecordText, dkimSignatures, loadDkimKeys } from '../../src/smtp/dkim.js';
import { tempDir } from '../helpers.js';

const dir = tempDir('ima-dkim-');
const rsaKey = join(dir, 'rsa.key');
const edKey = join(dir, 'ed.key');
writeFileSync(rsaKey, generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
writeFileSync(edKey, generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }));
const keys = loadDkimKeys(
  [
    { domain: 'a.test', selector: 'rsa', key: rsaKey },
    { domain: 'a.test', selector: 'ed', key: edKey },
  ],
  { dir },
  'smtp-send.toml',
);
const zone = new Map(keys.map((k) => [`${k.selector}._domainkey.a.test`, [[dkimRecordText(k)]]]));
const resolver = async (name: string) => zone.get(name) ?? Promise.reject(Object.assign(new Error(`ENOTFOUND ${name}`), { code: 'ENOTFOUND' }));

const message = 'From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: hello\r\nMessage-ID: <d1@a.test>\r\n\r\nHello Bob.\r\n';

it('signatures stay valid when the clock crosses a second while signing (t= is read once)', async () => {
  // mailauth rounds Date.now() to the second for t=; with the clock moving
  // 600 ms at every reading, two readings never agree. Before signTime was
  // fixed this made the signed and the returned header differ: a bad signature
  // for about 1 message in 1000 in real time.
  let now = Date.now();
  const clock = mock.method(Date, 'now', () => (now += 600));
  let signatures: string;
  try {
    signatures = await dkimSignatures(keys, Readable.from([Buffer.from(message)]));
  } finally {
    clock.mock.restore();
  }
  const r = await dkimVerify(Buffer.from(signatures + message), { resolver } as Parameters<typeof dkimVerify>[1]);
  assert.deepEqual(
    r.results.map((s) => `${s.status.result} ${s.selector}`),
    ['pass rsa', 'pass ed'],
    signatures,
  );
});
