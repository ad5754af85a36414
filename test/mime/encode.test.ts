// ima-to-mime's base64 lines against nodemailer's encoder (what the composer
// writes, then CRLF-to-LF converted for files): the same bytes for every
// size around a line's 57 bytes and any chunking; and a 0-byte attachment
// survives the round trip.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable, type Transform } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { describe, it } from 'node:test';
import { Encoder } from 'nodemailer/lib/base64';
import { Base64Lines, encodedPool } from '../../src/mime/to-mime.js';
import { BufferPool } from '../../src/spool.js';
import { mime, readIma, toIma, toMime } from './helpers.js';

const run = (t: Transform, chunks: Buffer[]) => buffer(Readable.from(chunks).pipe(t));

function chunked(data: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < data.length; i += size) out.push(data.subarray(i, i + size));
  return out;
}

/**
 * Base64Lines with pools: input chunks passed on from a pool (which it must
 * consume), each chunk out copied and consumed at once: a buffer reused while
 * still held would show. Returns the output and how many input buffers the pool made.
 */
async function pooledRun(newline: 'lf' | 'crlf', chunks: Buffer[]): Promise<{ out: Buffer; made: number }> {
  const input = new BufferPool(65536);
  const output = encodedPool(newline);
  const made = new Set<ArrayBufferLike>();
  const lent = chunks.map((c) => {
    const b = input.take();
    made.add(b.buffer);
    c.copy(b);
    return input.passOn(b.subarray(0, c.length));
  });
  // Lent lazily, one by one, so that a consumed input buffer can come round again.
  const source = Readable.from(
    (function* () {
      for (const c of lent) yield c;
    })(),
  );
  const out: Buffer[] = [];
  for await (const c of source.pipe(new Base64Lines(Buffer.from(newline === 'lf' ? '\n' : '\r\n'), { input, output }))) {
    out.push(Buffer.from(c as Buffer));
    output.consumed(c as Buffer);
  }
  return { out: Buffer.concat(out), made: made.size };
}

describe('Base64Lines writes what nodemailer writes', () => {
  it('with pooled buffers in and out, the same bytes; each input chunk is consumed', async () => {
    for (const size of [0, 1, 56, 57, 58, 57 * 1000 + 1, 200_000]) {
      const data = randomBytes(size);
      const expected = await run(new Encoder() as unknown as Transform, [data]);
      const lf = Buffer.from(expected.toString('latin1').replace(/\r\n/g, '\n'), 'latin1');
      for (const chunk of [7, 57, 65536]) {
        if (chunk < 57 && size > 1000) continue;
        assert.deepEqual((await pooledRun('crlf', chunked(data, chunk))).out, expected, `${size} bytes in chunks of ${chunk}, CRLF`);
        assert.deepEqual((await pooledRun('lf', chunked(data, chunk))).out, lf, `${size} bytes in chunks of ${chunk}, LF`);
      }
    }
    const input = new BufferPool(16);
    const passed = input.passOn(input.take().subarray(0, 10));
    await run(new Base64Lines(Buffer.from('\n'), { input }), [passed]);
    assert.equal(input.passedOn(passed), false, 'consumed');
  });

  it('every size up to three lines and some large ones, in chunks of 1, 7, 57 and 64 KiB, CRLF and LF', async () => {
    const sizes = [...Array.from({ length: 3 * 57 + 2 }, (_, i) => i), 57 * 1000, 57 * 1000 + 1, 200_000];
    for (const size of sizes) {
      const data = randomBytes(size);
      const expected = await run(new Encoder() as unknown as Transform, [data]);
      for (const chunk of [1, 7, 57, 65536]) {
        if (chunk < 57 && size > 1000) continue;
        const chunks = chunked(data, chunk);
        assert.deepEqual(await run(new Base64Lines(Buffer.from('\r\n')), chunks), expected, `${size} bytes in chunks of ${chunk}, CRLF`);
        const lf = Buffer.from(expected.toString('latin1').replace(/\r\n/g, '\n'), 'latin1');
        assert.deepEqual(await run(new Base64Lines(Buffer.from('\n')), chunks), lf, `${size} bytes in chunks of ${chunk}, LF`);
      }
    }
  });

  it('a 0-byte attachment, and ones of 1 and 57 bytes, come back byte for byte (LF and CRLF)', async () => {
    const parts = { 'empty.bin': Buffer.alloc(0), 'one.bin': Buffer.from([0xff]), 'line.bin': randomBytes(57) };
    const body = Object.entries(parts)
      .map(([name, data]) =>
        ['--B', `Content-Type: application/octet-stream; name="${name}"`, 'Content-Transfer-Encoding: base64', '', data.toString('base64'), ''].join('\r\n'),
      )
      .join('');
    const ima = await toIma(mime(['From: a@a.test', 'Content-Type: multipart/mixed; boundary="B"'], 'text\r\n' + body + '--B--\r\n'));
    for (const newline of ['lf', 'crlf'] as const) {
      const back = await readIma(await toIma(await toMime(ima, { newline })));
      for (const [name, data] of Object.entries(parts)) assert.deepEqual(back.files.get(`attachments/${name}`), data, `${name} (${newline})`);
    }
  });
});
