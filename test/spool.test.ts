import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { test } from 'node:test';
import { Headers, writeMessage } from '../src/message/index.js';
import { BufferPool, InOrderReader, SpoolStore, handingBack } from '../src/spool.js';
import { tempDir } from './helpers.js';

/** `n` bytes that differ from chunk to chunk, so a chunk reused too early shows in the output. */
function pattern(n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i + 4 <= n; i += 4) b.writeUInt32LE((i * 2654435761) >>> 0, i);
  return b;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function spooled(data: Buffer) {
  const store = new SpoolStore({ memoryBudget: 0, dir: tempDir() });
  const part = await store.add(Readable.from([data.subarray(0, 1000), data.subarray(1000)]));
  return { store, part };
}

test('spool: the chunks of a spooled part are reused once handed back, and fresh while they are not', async () => {
  const data = pattern(5 * 1024 * 1024 + 123);
  const { store, part } = await spooled(data);
  try {
    const memories = new Set<ArrayBufferLike>();
    const got: Buffer[] = [];
    for await (const c of part.open() as Readable) {
      memories.add((c as Buffer).buffer);
      got.push(Buffer.from(c as Buffer));
      store.readBuffers.consumed(c as Buffer);
    }
    assert.equal(sha(Buffer.concat(got)), sha(data));
    assert.ok(memories.size <= 3, `${memories.size} buffers for 11 chunks handed back one by one`);
    const kept: Buffer[] = [];
    for await (const c of part.open() as Readable) kept.push(c as Buffer);
    assert.equal(new Set(kept.map((c) => c.buffer)).size, kept.length, 'a chunk not handed back is never lent again');
    assert.equal(sha(Buffer.concat(kept)), sha(data));
  } finally {
    await store.dispose();
  }
});

test('spool: a part read from a stream that queued several pooled chunks hands each of them back once written', async () => {
  // Iterating the stream itself (for await) joins what is queued into a new Buffer: the pooled buffers behind it
  // would never come back, and the pool would allocate afresh for every chunk after.
  const pool = new BufferPool(1024);
  const taken = [pool.take(), pool.take(), pool.take()];
  const input = new PassThrough();
  for (const b of taken) input.write(pool.passOn(b.fill(7)));
  input.end();
  const store = new SpoolStore({ memoryBudget: 0, dir: tempDir() });
  try {
    const part = await store.add(input, pool);
    assert.equal(part.size, 3 * 1024);
    const again = new Set([pool.take(), pool.take(), pool.take()].map((b) => b.buffer));
    assert.ok(
      taken.every((b) => again.has(b.buffer)),
      'the three buffers are lent again',
    );
  } finally {
    await store.dispose();
  }
});

test('spool: a message written through handingBack to a file is byte for byte the one written straight to a stream', async () => {
  const data = pattern(6 * 1024 * 1024 + 7);
  const { store, part } = await spooled(data);
  try {
    const headers = new Headers([{ name: 'subject', value: 'big' }]);
    const parts = {
      headers,
      attachments: [
        { name: 'a.bin', ...part },
        { name: 'b.bin', ...part },
      ],
    };
    const plain = new PassThrough();
    const chunks: Buffer[] = [];
    plain.on('data', (c: Buffer) => chunks.push(c));
    await writeMessage(plain, parts);
    const file = join(tempDir(), 'out.ima');
    const out = createWriteStream(file);
    await writeMessage(handingBack(out, store.readBuffers), parts);
    await finished(out);
    const written: Buffer[] = [];
    for await (const c of createReadStream(file)) written.push(c as Buffer);
    assert.equal(sha(Buffer.concat(written)), sha(Buffer.concat(chunks)));
  } finally {
    await store.dispose();
  }
});

test('spool: an InOrderReader lends its buffers again once released past them, and the bytes read are the file', async () => {
  const data = pattern(3 * 1024 * 1024 + 17);
  const dir = tempDir();
  const path = join(dir, 'in.bin');
  writeFileSync(path, data);
  const pool = new BufferPool(256 * 1024);
  const reader = new InOrderReader(await open(path, 'r'), pool);
  const got: Buffer[] = [];
  const memories = new Set<ArrayBufferLike>();
  let offset = 0;
  for await (const c of reader.stream) {
    memories.add((c as Buffer).buffer);
    got.push(Buffer.from(c as Buffer));
    offset += (c as Buffer).length;
    reader.release(offset);
  }
  assert.equal(sha(Buffer.concat(got)), sha(data));
  assert.ok(memories.size <= 4, `${memories.size} buffers for 13 chunks released one by one`);
});
