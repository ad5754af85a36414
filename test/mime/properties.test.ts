// Property tests: random header values and attachment names survive
// IMA -> MIME -> IMA, and random legacy subjects and file names survive
// MIME -> IMA -> MIME -> IMA unchanged.
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Headers, bufferPart, checkField, writeMessage } from '../../src/message/index.js';
import { cleanName } from '../../src/mime/names.js';
import { one, readIma, toIma, toMime } from './helpers.js';

async function ima(subject: string, extra: string, names: string[]): Promise<Buffer> {
  const h = new Headers().add('from', 'alice@a.test').add('to', 'bob@b.test').add('subject', subject).add('x-extra', extra);
  h.add('date', '2026-11-23T10:00:00+01:00').add('message-id', 'urn:uuid:7639f84a-faa9-5f7e-a3a9-db428e9fb00c');
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  await writeMessage(out, {
    headers: h,
    body: bufferPart(Buffer.from('text\n')),
    attachments: names.map((name, i) => ({ name, ...bufferPart(Buffer.from([i, 0, 255, 13, 10])) })),
  });
  return Buffer.concat(chunks);
}

// A header value as IMA allows it: no control characters, no space at either end.
const value = fc
  .string({
    unit: fc.oneof(
      fc.constantFrom(' ', '=', '?', '"', ',', '<', '>', ':', ';', '\\', '(', ')', '%', '_'),
      fc
        .integer({ min: 0x20, max: 0x10ffff })
        .filter((c) => c < 0xd800 || c > 0xdfff)
        .map((c) => String.fromCodePoint(c)),
    ),
    maxLength: 120,
  })
  .map((s) => s.replace(/[\p{Cc}\p{Cs}\uFFFE\uFFFF]/gu, '').trim())
  .filter((s) => !checkField('subject', s));
const name = fc
  .string({
    unit: fc.oneof(
      fc.constantFrom('.', '-', ' ', '=', '%', '"', ';'),
      fc
        .integer({ min: 0x20, max: 0x10ffff })
        .filter((c) => c < 0xd800 || c > 0xdfff)
        .map((c) => String.fromCodePoint(c)),
    ),
    minLength: 1,
    maxLength: 60,
  })
  .map((s) => cleanName(s))
  .filter((s): s is string => s !== undefined);

describe('property: random values survive the round trips', () => {
  it('IMA -> MIME -> IMA keeps subject, an unknown header, and attachment names and bytes', async () => {
    await fc.assert(
      fc.asyncProperty(value, value, fc.uniqueArray(name, { maxLength: 4, selector: (n) => n }), async (subject, extra, names) => {
        const back = await readIma(await toIma(await toMime(await ima(subject, extra, names))));
        assert.equal(one(back, 'subject') ?? '', subject);
        assert.equal(one(back, 'x-extra') ?? '', extra);
        const got = [...back.files.keys()].filter((k) => k.startsWith('attachments/')).map((k) => k.slice(12));
        assert.deepEqual(got.sort(), [...names].sort());
        names.forEach((n, i) => assert.deepEqual(back.files.get(`attachments/${n}`), Buffer.from([i, 0, 255, 13, 10])));
      }),
      { numRuns: 150 },
    );
  });
  it('a file name without an extension stays as it is both ways, even one that spells a type ("eml", "EML.")', async () => {
    for (const name of ['eml', 'EML.', 'pdf', 'txt', 'notes.', '.eml']) {
      const first = await ima('s', 'x', [name]);
      const back = await toIma(await toMime(first));
      assert.deepEqual([...(await readIma(back)).files.keys()], [...(await readIma(first)).files.keys()], name);
    }
  });

  it('MIME -> IMA -> MIME -> IMA is the identity for random encoded subjects and file names', async () => {
    await fc.assert(
      fc.asyncProperty(value, fc.string({ maxLength: 40 }), async (subject, file) => {
        const encoded = `=?utf-8?b?${Buffer.from(subject).toString('base64')}?=`;
        const fname = `=?utf-8?q?${[...Buffer.from(file)].map((b) => `=${b.toString(16).padStart(2, '0')}`).join('')}?=`;
        const mime = `From: a@a.test\r\nSubject: ${encoded}\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n--B\r\nContent-Type: application/octet-stream; name="${fname}"\r\n\r\nx\r\n--B--\r\n`;
        const ima1 = await toIma(mime);
        const ima2 = await toIma(await toMime(ima1));
        assert.equal(ima2.toString('latin1'), ima1.toString('latin1'));
      }),
      { numRuns: 150 },
    );
  });
});
