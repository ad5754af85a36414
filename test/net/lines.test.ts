import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { LineError, LineReader } from '../../src/net/lines.js';

const limits = { maxLine: 16, idleTimeout: 200, dataTimeout: 200 };

async function collect(it: AsyncIterable<Buffer>): Promise<string> {
  const parts: Buffer[] = [];
  for await (const c of it) parts.push(c);
  return Buffer.concat(parts).toString();
}

test('lines: pipelined lines and data arriving in one chunk are read in order', async () => {
  const input = new PassThrough();
  input.end('MAIL 5\nhello\nDATA\nxyzzyNEXT\n');
  const r = new LineReader(input, limits);
  assert.equal(await r.readLine(), 'MAIL 5');
  assert.equal(await r.readLine(), 'hello');
  assert.equal(await r.readLine(), 'DATA');
  assert.equal(await collect(r.readBytes(5)), 'xyzzy');
  assert.equal(await r.readLine(), 'NEXT');
  assert.equal(await r.readLine(), null);
});

test('lines: data split over many chunks, and skip()', async () => {
  const input = new PassThrough();
  const r = new LineReader(input, limits);
  for (const c of ['ab', 'cd', 'efLINE', '\n']) input.write(c);
  input.end();
  await r.skip(3);
  assert.equal(await collect(r.readBytes(3)), 'def');
  assert.equal(await r.readLine(), 'LINE');
});

for (const [what, text, kind] of [
  ['a line over the limit', 'x'.repeat(17) + '\n', 'too-long'],
  ['a long line with no LF yet', 'x'.repeat(40), 'too-long'],
  ['a CR before LF', 'MAIL 1\r\n', 'control'],
  ['bytes that are not UTF-8', 'MAIL \xff\n', 'not-utf8'],
  ['a line cut by the end of input', 'MAIL', 'eof'],
] as const) {
  test(`lines: ${what} is refused`, async () => {
    const input = new PassThrough();
    input.end(Buffer.from(text, 'latin1'));
    const r = new LineReader(input, limits);
    await assert.rejects(r.readLine(), (e: LineError) => e.kind === kind);
  });
}

test('lines: a silent peer times out; a stalled data transfer times out', async () => {
  const input = new PassThrough();
  const r = new LineReader(input, limits);
  await assert.rejects(r.readLine(), (e: LineError) => e.kind === 'timeout' && /no command/.test(e.message));
  input.write('abc');
  await assert.rejects(collect(r.readBytes(10)), (e: LineError) => e.kind === 'timeout' && /no data/.test(e.message));
});
