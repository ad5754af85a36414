// The fixture corpus (test/fixtures/mime/SOURCES): every real-world message
// converts, and MIME -> IMA -> MIME -> IMA gives the identical IMA message,
// so text, HTML, every attachment byte, addresses, subject, date and the
// threading ids all survive the way back. In-process: a process per message
// would take minutes.
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ROOT } from '../helpers.js';
import { readIma, toIma, toMime } from './helpers.js';

export const CORPUS = join(ROOT, 'test/fixtures/mime');

export function corpusFiles(): string[] {
  const dirs = readdirSync(CORPUS, { withFileTypes: true }).filter((d) => d.isDirectory());
  return dirs
    .map((d) => d.name)
    .sort()
    .flatMap((d) =>
      readdirSync(join(CORPUS, d))
        .filter((f) => f.endsWith('.eml'))
        .sort()
        .map((f) => join(CORPUS, d, f)),
    );
}

describe('the fixture corpus', () => {
  const files = corpusFiles();
  it('has at least 220 real-world messages', () => assert.ok(files.length >= 220, `${files.length}`));
  it('every message converts, and MIME -> IMA -> MIME -> IMA is the identity on the IMA side', async () => {
    const unstable: string[] = [];
    let withAttachments = 0;
    let withHtml = 0;
    for (const file of files) {
      const ima1 = await toIma(readFileSync(file));
      const ima2 = await toIma(await toMime(ima1));
      if (!ima1.equals(ima2)) unstable.push(file);
      const m = await readIma(ima1);
      assert.ok(m.headers['message-id']?.[0]?.startsWith('urn:uuid:'), file);
      if ([...m.files.keys()].some((k) => k.startsWith('attachments/'))) withAttachments++;
      if (m.files.has('body.html')) withHtml++;
    }
    assert.deepEqual(unstable, []);
    assert.ok(withAttachments >= 20 && withHtml >= 40, `${withAttachments} with attachments, ${withHtml} with HTML: the corpus covers both`);
  });
});

describe('signed mail in the corpus (ima-mime(7), LIMITS)', () => {
  it('PGP/MIME multipart/signed is taken apart: its text and signature.asc survive, the signed part as signed bytes does not', async () => {
    const original = readFileSync(join(CORPUS, 'cpython/msg_45.eml'));
    const m = await readIma(await toIma(original));
    assert.equal(m.files.get('body')!.toString(), 'This is the signed contents.\n');
    const signature = original.toString().split('filename="signature.asc"\n\n')[1].split('\n--borderline--')[0];
    assert.equal(m.files.get('attachments/signature.asc')!.toString(), signature);
    const back = (await toMime(await toIma(original))).toString();
    assert.doesNotMatch(back, /multipart\/signed/i, 'IMA has no place for the signed entity and its part headers: the way back cannot be verified');
    assert.doesNotMatch(back, /X-Long-Line: Another/, "the signed part's own header is not kept");
  });
});
