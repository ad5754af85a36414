import assert from 'node:assert/strict';
import { PassThrough, Readable } from 'node:stream';
import { test } from 'node:test';
import { chunksOf } from '../src/streams.js';

/** A stream holding three chunks written before anyone reads. */
function threeWaiting(): { stream: PassThrough; written: Buffer[] } {
  const stream = new PassThrough();
  const written = [Buffer.from('first '), Buffer.from('second '), Buffer.from('third')];
  for (const c of written) stream.write(c);
  stream.end();
  return { stream, written };
}

test('chunksOf: chunks that waited for a slow reader come one by one, the very buffers written (for await joins them into a copy)', async () => {
  const { stream, written } = threeWaiting();
  await new Promise((r) => setImmediate(r));
  const got: Buffer[] = [];
  for await (const c of chunksOf(stream)) got.push(c);
  assert.equal(got.length, 3);
  got.forEach((c, i) => assert.equal(c, written[i], `chunk ${i} is the buffer written, not a copy`));

  // What the plain iterator does with the same stream: one new buffer for all three.
  const plain = threeWaiting();
  await new Promise((r) => setImmediate(r));
  const joined: Buffer[] = [];
  for await (const c of plain.stream) joined.push(c as Buffer);
  assert.equal(joined.length, 1);
  assert.equal(joined[0].toString(), 'first second third');
});

test('chunksOf: a reader slower than the writer holds the writer back (backpressure), and gets every byte in order', async () => {
  const stream = new PassThrough({ highWaterMark: 1024 });
  let writes = 0;
  let refused = false;
  const writer = (async () => {
    for (let i = 0; i < 200; i++) {
      writes++;
      if (!stream.write(Buffer.alloc(512, i % 256))) {
        refused = true;
        await new Promise((r) => stream.once('drain', r));
      }
    }
    stream.end();
  })();
  const seen: number[] = [];
  for await (const c of chunksOf(stream)) {
    for (const b of c) seen.push(b);
    await new Promise((r) => setTimeout(r, 1));
  }
  await writer;
  assert.equal(writes, 200);
  assert.ok(refused, 'the writer was told to wait');
  assert.equal(seen.length, 200 * 512);
  for (let i = 0; i < 200; i++) assert.equal(seen[i * 512], i % 256);
});

test('chunksOf: throws the stream error, and a premature close, like for await', async () => {
  const failing = new PassThrough();
  failing.write('some');
  setImmediate(() => failing.destroy(new Error('disk gone')));
  await assert.rejects(
    (async () => {
      for await (const _ of chunksOf(failing));
    })(),
    /disk gone/,
  );

  const cut = new PassThrough();
  cut.write('some');
  setImmediate(() => cut.destroy());
  await assert.rejects(
    (async () => {
      for await (const _ of chunksOf(cut));
    })(),
    { code: 'ERR_STREAM_PREMATURE_CLOSE' },
  );

  const already = new PassThrough();
  already.destroy(new Error('broken before'));
  await assert.rejects(
    (async () => {
      for await (const _ of chunksOf(already));
    })(),
    /broken before/,
  );
});

test('chunksOf: a reader that leaves early destroys the stream; an ended stream gives nothing', async () => {
  const endless = new Readable({
    read() {
      this.push(Buffer.alloc(100));
    },
  });
  let n = 0;
  for await (const _ of chunksOf(endless)) if (++n === 3) break;
  assert.equal(endless.destroyed, true);

  const empty = Readable.from([]);
  for await (const _ of empty);
  const after: Buffer[] = [];
  for await (const c of chunksOf(empty)) after.push(c);
  assert.deepEqual(after, []);
});
