// mailsplit's splitter with the plain-body fast path (split.ts) against the
// splitter as the library ships it, on the same chunks, for every cut of
// messages full of lines that look like delimiters: the same parts, the
// same body bytes.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { isDeepStrictEqual } from 'node:util';
import mailsplit from '@zone-eu/mailsplit';
import type { Transform } from 'node:stream';
import { fastBodies } from '../../src/mime/split.js';

interface Piece {
  type: string;
  bytes: string;
}

/** What a splitter emits for the chunks: parts, and body bytes joined (how they are cut does not matter). */
async function split(chunks: Buffer[], fast: boolean): Promise<Piece[]> {
  const splitter = new mailsplit.Splitter() as unknown as Transform;
  if (fast) fastBodies(splitter);
  const out: Piece[] = [];
  const done = new Promise<void>((resolve, reject) => {
    splitter.on('data', (d: { type: string; value?: Buffer; getHeaders?: () => Buffer }) => {
      // The bytes of 'data' (multipart structure: delimiters, preamble) are not read by mailparser, and mailsplit's own
      // depend on where the input was cut; where they come is what ends a part's body.
      const bytes = d.type === 'node' ? d.getHeaders!().toString('latin1') : d.type === 'data' ? '' : (d.value ?? Buffer.alloc(0)).toString('latin1');
      const last = out[out.length - 1];
      if (d.type !== 'node' && last?.type === d.type) last.bytes += bytes;
      else out.push({ type: d.type, bytes });
    });
    splitter.on('end', resolve);
    splitter.on('error', reject);
  });
  for (const c of chunks) splitter.write(c);
  splitter.end();
  await done;
  return out.filter((p) => p.type !== 'body' || p.bytes.length > 0);
}

const b64 = (n: number) =>
  (
    randomBytes(n)
      .toString('base64')
      .match(/.{1,76}/g) ?? []
  ).join('\r\n');

const MULTIPART = [
  'From: a@a.test',
  'Content-Type: multipart/mixed; boundary="BB"',
  '',
  'preamble',
  '--BB',
  'Content-Type: text/plain',
  '',
  'Hello',
  '-- ',
  'a signature after the usual dashes',
  '--BBnot-the-boundary',
  '--BB-- not closing either',
  '\r--still text',
  '',
  '',
  '--BB',
  'Content-Type: multipart/alternative; boundary="AA"',
  '',
  '--AA',
  'Content-Type: text/plain',
  '',
  '- a list',
  '-- ',
  '--AA',
  'Content-Type: text/html',
  '',
  '<p>x</p>',
  '--AA--',
  '--BB',
  'Content-Type: application/octet-stream',
  'Content-Transfer-Encoding: base64',
  '',
  b64(300),
  '--BB',
  'Content-Type: text/plain',
  '',
  '--BB--',
  'epilogue',
  '--BB',
  '',
].join('\r\n');

const MESSAGES: Record<string, string> = {
  'nested multiparts, CRLF': MULTIPART,
  'nested multiparts, LF': MULTIPART.replace(/\r\n/g, '\n'),
  'nested multiparts, mixed line ends': MULTIPART.replace(/\r\n/g, (_m, at: number) => (at % 3 ? '\r\n' : '\n')),
  'a single-part message with dash lines': ['Subject: x', '', '--', '- x', 'text', '--x--', '\r-', 'end'].join('\r\n'),
  'runs of empty lines before delimiters': [
    'Content-Type: multipart/mixed; boundary=E',
    '',
    '--E',
    '',
    'x',
    '',
    '',
    '',
    '--E',
    '',
    '',
    '\r',
    '',
    '--E',
    '',
    '\n\n',
    '--E--',
    '',
  ].join('\r\n'),
  'a leaf part of several lines, then a part with several header lines': [
    'Content-Type: multipart/mixed; boundary=BB',
    '',
    '--BB',
    'Content-Type: text/plain',
    '',
    'line one',
    'line two',
    'line three',
    'line four',
    '--BB',
    'Content-Type: text/plain',
    'Content-Disposition: inline',
    'X-One: 1',
    'X-Two: 2',
    '',
    'second body',
    'more',
    '--BB--',
    '',
  ].join('\r\n'),
  'an unclosed multipart whose last part runs to the end': ['Content-Type: multipart/mixed; boundary=q', '', '--q', '', 'body line', 'more\r', '-q', 'x'].join(
    '\r\n',
  ),
};

/**
 * The input cut in two at every offset, in three around every 17th, and into
 * pieces of every size up to 100 bytes: a body's lines then run across many
 * chunks, each arriving with the splitter in the body already.
 */
function cuts(input: Buffer): Buffer[][] {
  const out: Buffer[][] = [[input]];
  for (let size = 1; size <= 100; size++) out.push(Array.from({ length: Math.ceil(input.length / size) }, (_, k) => input.subarray(k * size, (k + 1) * size)));
  for (let i = 0; i <= input.length; i++) out.push([input.subarray(0, i), input.subarray(i)]);
  for (let i = 1; i < input.length; i += 17)
    for (let j = i + 1; j < Math.min(input.length, i + 5); j++) out.push([input.subarray(0, i), input.subarray(i, j), input.subarray(j)]);
  return out;
}

const LINES = [
  '',
  '',
  'x',
  'text line',
  '-',
  '--E',
  '--E--',
  '--F',
  '--F--',
  ' --E',
  b64(57),
  '-- ',
  'Content-Type: multipart/mixed; boundary=F',
  'Content-Type: text/plain',
];
const pick = <T>(a: readonly T[]) => a[Math.floor(Math.random() * a.length)];

/** A message of random lines that look like delimiters, headers and bodies, with random line ends (CR alone among them when `loneCr`). */
function randomMessage(loneCr: boolean): Buffer {
  const lines = loneCr ? [...LINES, '\r', '\r--E', '\r--F'] : LINES;
  const ends = loneCr ? ['\r\n', '\n', '\r'] : ['\r\n', '\r\n', '\n'];
  let text = 'Content-Type: multipart/mixed; boundary=E\r\n\r\n--E\r\n';
  for (let i = 0; i < 40; i++) text += pick(lines) + pick(ends);
  return Buffer.from(text, 'latin1');
}

/** Random messages cut at two random offsets: the fast path's parts and bodies against mailsplit's on the same cuts. */
async function fuzz(loneCr: boolean): Promise<{ runs: number; unstable: number }> {
  let unstable = 0;
  let runs = 0;
  for (let n = 0; n < 200; n++) {
    const input = randomMessage(loneCr);
    const reference = await split([input], false);
    for (let k = 0; k < 10; k++, runs++) {
      const cutAt = [Math.floor(Math.random() * input.length), Math.floor(Math.random() * input.length)].sort((a, b) => a - b);
      const chunks = [input.subarray(0, cutAt[0]), input.subarray(cutAt[0], cutAt[1]), input.subarray(cutAt[1])];
      const where = `${JSON.stringify(input.toString('latin1'))} cut at ${cutAt.join(',')}`;
      const fast = await split(chunks, true);
      if (isDeepStrictEqual(fast, reference)) continue;
      // mailsplit's own result depends on the cuts for a body of empty lines or a delimiter after a lone CR:
      // there the fast path may give what mailsplit gives on either cut.
      const itself = await split(chunks, false);
      assert.ok(!isDeepStrictEqual(itself, reference), `${where}: mailsplit's result does not depend on the cuts here, so the fast path's must not`);
      if (isDeepStrictEqual(fast, itself)) continue;
      assert.ok(loneCr, `${where}: the fast path gives what mailsplit gives on neither cut`);
      unstable++;
    }
  }
  return { runs, unstable };
}

describe('the splitter fast path emits what mailsplit emits', () => {
  it('random messages of delimiter-like lines with CRLF and LF line ends, cut at random offsets', async () => {
    await fuzz(false);
  });

  it('the same with lone CRs: where mailsplit itself depends on the cuts, so may the fast path (how often: below 2 %)', async () => {
    const { runs, unstable } = await fuzz(true);
    assert.ok(unstable / runs < 0.02, `${unstable} of ${runs}`);
  });

  it('a header block whose ending line end is cut between CR and LF, then a delimiter after a lone CR: what mailsplit emits on the same cut', async () => {
    // The header block of the part ends in the second chunk's first byte. Cut instead at the next empty line,
    // deep in the body, the input reached the splitter cut before "x\n\r--E", and mailsplit, whose
    // lone-CR delimiters depend on the cuts, took "\r--E" for body.
    const input = Buffer.from(
      'Content-Type: multipart/mixed; boundary=E\r\n\r\n--E\r\nQUJD\r\n\r--F\r\n\r\nx\n\r\r\r\rtext line\r\n\r\nx\n\r--E\r\n--F--\r\n',
      'latin1',
    );
    const chunks = [input.subarray(0, 63), input.subarray(63)];
    const itself = await split(chunks, false);
    assert.ok(itself.some((p) => p.type === 'body' && p.bytes === 'x\n\r\r\r\rtext line\r\n\r\nx'));
    assert.deepEqual(await split(chunks, true), itself);
  });

  it('a body line longer than what is held back, in small pieces: the splitter takes it over, and emits what mailsplit emits', async () => {
    const input = Buffer.from(`Subject: x\r\n\r\nfirst\r\nsecond\r\n${'a'.repeat(200_000)}\r\n-- \r\nend\r\n`, 'latin1');
    const pieces = Array.from({ length: Math.ceil(input.length / 1000) }, (_, k) => input.subarray(k * 1000, (k + 1) * 1000));
    const reference = await split([input], false);
    assert.ok(reference.some((p) => p.type === 'body' && p.bytes.includes('a'.repeat(200_000))));
    assert.deepEqual(await split(pieces, true), reference);
  });

  for (const [name, text] of Object.entries(MESSAGES)) {
    it(`${name}, cut at every offset`, async () => {
      const input = Buffer.from(text, 'latin1');
      const reference = await split([input], false);
      assert.ok(reference.some((p) => p.type === 'body'));
      for (const chunks of cuts(input)) {
        const where = `cut at ${chunks.map((c) => c.length).join('+')}`;
        assert.deepEqual(await split(chunks, true), reference, where);
        assert.deepEqual(await split(chunks, false), reference, `${where} (mailsplit itself)`);
      }
    });
  }
});
