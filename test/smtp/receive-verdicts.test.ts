// SPF, DKIM and DMARC verdicts of messages signed here with mailauth and a
// test key; DNS answered from a table through mailauth's resolver option.
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { PassThrough, Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { dkimSign } from 'mailauth';
import { verdicts } from '../../src/smtp/receive-verdicts.js';

const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const pub = publicKey.export({ type: 'spki', format: 'der' }).toString('base64');
const zone: Record<string, string[][]> = {
  'TXT sel._domainkey.a.test': [[`v=DKIM1; k=rsa; p=${pub}`]],
  'TXT a.test': [['v=spf1 ip4:192.0.2.1 -all']],
  'TXT _dmarc.a.test': [['v=DMARC1; p=reject']],
};
const asked: string[] = [];
async function resolver(name: string, type: string): Promise<string[][]> {
  asked.push(`${type} ${name}`);
  const answer = zone[`${type} ${name.toLowerCase()}`];
  if (answer) return answer;
  throw Object.assign(new Error(`queryTxt ENOTFOUND ${name}`), { code: 'ENOTFOUND' });
}

const message = 'From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: signed\r\nMessage-ID: <s1@a.test>\r\n\r\nHello Bob.\r\n';

async function signed(): Promise<string> {
  const r = await dkimSign(message, {
    signTime: new Date(), // else t= may differ between the signed and the returned header (src/smtp/dkim.ts)
    signatureData: [{ signingDomain: 'a.test', selector: 'sel', privateKey: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string }],
  } as unknown as Parameters<typeof dkimSign>[1]);
  return r.signatures + message;
}

/** Feed the message in small chunks, as it would stream from a socket. */
const chunked = (s: string) =>
  Readable.from(
    Buffer.from(s)
      .toString('binary')
      .match(/[\s\S]{1,7}/g)!
      .map((c) => Buffer.from(c, 'binary')),
  );

describe('smtp-receive verdicts (mailauth)', () => {
  it('a signed message from an SPF-permitted address passes SPF, DKIM and DMARC', async () => {
    const v = await verdicts(chunked(await signed()), { ip: '192.0.2.1', helo: 'mail.a.test', sender: 'alice@a.test', hostname: 'mx.b.test', resolver });
    assert.match(
      v.header,
      /^mx\.b\.test; dkim=pass header\.i=@a\.test header\.s=sel .*; spf=pass .*smtp\.mailfrom=alice@a\.test.*; dmarc=pass \(p=REJECT\) header\.from=a\.test/,
    );
    assert.equal(v.summary, 'spf=pass dkim=pass dmarc=pass');
    assert.equal(v.dmarcReject, false);
    assert.ok(asked.includes('TXT sel._domainkey.a.test'));
  });

  it('a tampered message from elsewhere fails all three, and DMARC p=reject says refuse', async () => {
    const tampered = (await signed()).replace('Hello Bob.', 'Send money.');
    const v = await verdicts(chunked(tampered), { ip: '198.51.100.9', helo: 'evil.test', sender: 'alice@a.test', hostname: 'mx.b.test', resolver });
    // mailauth calls a body that no longer matches its hash "neutral" (the signature itself is intact).
    assert.equal(v.summary, 'spf=fail dkim=neutral dmarc=fail');
    assert.match(v.header, /body hash did not verify/);
    assert.equal(v.dmarcReject, true);
    assert.doesNotMatch(v.header, /[\r\n]/);
  });

  it('an unsigned message of a domain without records: none, and no refusal', async () => {
    const v = await verdicts(Readable.from([Buffer.from('From: c@c.test\r\n\r\nx\r\n')]), {
      ip: '192.0.2.7',
      helo: 'c.test',
      sender: 'c@c.test',
      hostname: 'mx.b.test',
      resolver,
    });
    assert.equal(v.summary, 'spf=none dkim=none dmarc=none');
    assert.equal(v.dmarcReject, false);
  });
});

describe('smtp-receive verdicts, a message refused before the checks start', () => {
  it('ends with the refusal instead of waiting for data that never comes', async () => {
    const input = new PassThrough();
    input.on('error', () => {});
    input.destroy(Object.assign(new Error('message larger than the limit'), { status: '5.3.4' }));
    const deadline = new Promise<never>((_r, rej) => setTimeout(() => rej(new Error('verdicts still waiting after 10 s')), 10_000).unref());
    const opts = { ip: '192.0.2.7', helo: 'c.test', sender: 'c@c.test', hostname: 'mx.b.test', resolver };
    await assert.rejects(Promise.race([verdicts(input, opts), deadline]), /larger than the limit/);
  });
});
