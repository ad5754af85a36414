// The fast base64 decoder against the library it replaces (libbase64's
// Decoder, what mailsplit uses) on the same chunks, for every cut of the
// input: the bytes out must be the same whatever the input holds.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable, type Transform } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { finished } from 'node:stream/promises';
import { describe, it } from 'node:test';
import { Decoder as LibDecoder } from 'libbase64';
import { Base64Decoder, decodedSize } from '../../src/mime/decode.js';
import { BufferPool } from '../../src/spool.js';

async function run(decoder: Transform, chunks: Buffer[]): Promise<Buffer> {
  return buffer(Readable.from(chunks).pipe(decoder));
}

/**
 * The decoder with its buffers from a pool, each chunk out copied and
 * handed back at once: a buffer reused while still held would show.
 */
async function pooled(chunks: Buffer[]): Promise<Buffer> {
  const pool = new BufferPool(decodedSize(4096));
  const out: Buffer[] = [];
  for await (const c of Readable.from(chunks).pipe(new Base64Decoder(pool))) {
    out.push(Buffer.from(c as Buffer));
    pool.consumed(c as Buffer);
  }
  return Buffer.concat(out);
}

/** Both decoders on the same chunks (and the fast one with pooled buffers, which must give the same). */
async function both(chunks: Buffer[]): Promise<[Buffer, Buffer]> {
  const fast = await run(new Base64Decoder(), chunks);
  assert.deepEqual(await pooled(chunks), fast, 'with pooled buffers');
  return [fast, await run(new LibDecoder() as unknown as Transform, chunks)];
}

/** The input cut in two at every offset, and in three at pairs of offsets near its line ends. */
function cuts(input: Buffer): Buffer[][] {
  const out: Buffer[][] = [[input]];
  for (let i = 0; i <= input.length; i++) out.push([input.subarray(0, i), input.subarray(i)]);
  for (let i = 1; i < input.length; i += 3)
    for (let j = i + 1; j < Math.min(input.length, i + 9); j++) out.push([input.subarray(0, i), input.subarray(i, j), input.subarray(j)]);
  return out;
}

const wrap = (b64: string, width: number, eol: string) => (b64.match(new RegExp(`.{1,${width}}`, 'g')) ?? []).join(eol) + eol;

const CASES: Record<string, Buffer> = {
  'lines of 76 and CRLF': Buffer.from(wrap(randomBytes(200).toString('base64'), 76, '\r\n')),
  'LF line ends': Buffer.from(wrap(randomBytes(100).toString('base64'), 76, '\n')),
  'lines not a multiple of 4 long': Buffer.from(wrap(randomBytes(101).toString('base64'), 9, '\r\n')),
  'one long line, no line end': Buffer.from(randomBytes(120).toString('base64')),
  'missing padding': Buffer.from(randomBytes(100).toString('base64').replace(/=+$/, '') + '\r\n'),
  'no padding, one character too many': Buffer.from(randomBytes(99).toString('base64') + 'Q\r\n'),
  'spaces and tabs inside lines': Buffer.from(wrap(randomBytes(90).toString('base64'), 20, ' \t\r\n').replace(/(.{7})/g, '$1 ')),
  'garbage characters': Buffer.from(wrap(randomBytes(90).toString('base64'), 76, '\r\n').replace(/(.{13})/g, '$1*!\x00\xff')),
  'base64url characters (garbage to MIME)': Buffer.from(wrap(randomBytes(90).toString('base64url'), 76, '\r\n')),
  'every line padded on its own': Buffer.from(
    Array.from({ length: 6 }, () => randomBytes(10).toString('base64'))
      .map((l) => l + '\r\n')
      .join(''),
  ),
  'lone CRs and bare LFs mixed': Buffer.from(wrap(randomBytes(90).toString('base64'), 30, '\r').replace(/(.{45})/g, '$1\n')),
  'padding then more data': Buffer.from('YWJj\r\nZA==\r\nZWZn\r\n'),
  'only line ends': Buffer.from('\r\n\r\n\n'),
  empty: Buffer.alloc(0),
  'three characters': Buffer.from('YWJ'),
};

describe('Base64Decoder gives the bytes libbase64 gives', () => {
  for (const [name, input] of Object.entries(CASES)) {
    it(`${name}, cut at every offset`, async () => {
      for (const chunks of cuts(input)) {
        const [fast, lib] = await both(chunks);
        assert.deepEqual(fast, lib, `cut at ${chunks.map((c) => c.length).join('+')}`);
      }
    });
  }

  it('a large chunk clean at first and with padding, garbage and spaces far into it', async () => {
    const clean = wrap(randomBytes(200_000).toString('base64'), 76, '\r\n');
    for (const tail of ['ZA==\r\nZWZn\r\n', 'YW*J j\r\n', 'QQ\r\n']) {
      for (const at of [70_000, 140_000, clean.length]) {
        const input = Buffer.from(clean.slice(0, at) + tail + clean.slice(at));
        const [fast, lib] = await both([input]);
        assert.deepEqual(fast, lib, `${JSON.stringify(tail)} at ${at}`);
      }
    }
  });

  it('well-formed base64 decodes to the original bytes whatever the chunking (the fast path, 1 MiB)', async () => {
    const data = randomBytes(1024 * 1024 + 7);
    const text = Buffer.from(wrap(data.toString('base64'), 76, '\r\n'));
    for (const size of [1, 3, 4, 77, 78, 4096, 65536, 1 << 20]) {
      const chunks: Buffer[] = [];
      for (let i = 0; i < text.length; i += size) chunks.push(text.subarray(i, i + size));
      if (size < 4096) chunks.splice(2000); // small chunks: the first few thousand are enough to show the carry works
      const fast = await run(new Base64Decoder(), chunks);
      const lib = await run(new LibDecoder() as unknown as Transform, chunks);
      assert.deepEqual(fast, lib, `chunks of ${size}`);
      assert.deepEqual(await pooled(chunks), fast, `chunks of ${size}, pooled`);
      if (size >= 4096) assert.deepEqual(fast, data, `chunks of ${size}`);
    }
  });

  it('a reader that falls behind still gets each pooled chunk as it was passed on, never a join of them', async () => {
    // mailparser reads the decoder with read() on 'readable': a byte stream's read() joins what is queued into a
    // new Buffer, and the pooled buffers behind a join are never handed back.
    const pool = new BufferPool(decodedSize(256 * 1024));
    const decoder = new Base64Decoder(pool);
    const line = Buffer.from(randomBytes(57).toString('base64') + '\r\n');
    const lines = Buffer.from(wrap(randomBytes(57 * 1000).toString('base64'), 76, '\r\n'));
    const out: Buffer[] = [];
    decoder.on('readable', () => {
      for (let c; (c = decoder.read() as Buffer | null) !== null;) out.push(c);
    });
    decoder.write(line);
    decoder.write(lines);
    decoder.end();
    await finished(decoder);
    assert.deepEqual(
      out.map((c) => c.length),
      [57, 57 * 1000],
    );
    assert.ok(pool.passedOn(out[1]), 'the large chunk read is the view passed on');
  });

  it('an input chunk passed on to it is handed back once decoded, and only such a chunk', async () => {
    const input = new BufferPool(1024);
    const text = Buffer.from(wrap(randomBytes(300).toString('base64'), 76, '\r\n'));
    const [passed, kept] = [input.take(), input.take()];
    text.copy(passed);
    text.copy(kept);
    const view = input.passOn(passed.subarray(0, text.length));
    const out = await run(new Base64Decoder(undefined, input), [view, kept.subarray(0, text.length)]);
    assert.equal(out.length, 600);
    assert.equal(input.take().buffer, passed.buffer, 'the chunk passed on is lent again');
    assert.notEqual(input.take().buffer, kept.buffer, 'the other one is not');
  });
});
