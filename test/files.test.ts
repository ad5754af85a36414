import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fsyncDir, writeFileAtomic } from '../src/files.js';
import { tempDir } from './helpers.js';

test('files: concurrent fsyncs of one directory (group commit) all complete, and each caller hears a failure', async () => {
  const dir = tempDir();
  const box = join(dir, 'new');
  mkdirSync(box);
  await Promise.all(Array.from({ length: 40 }, () => fsyncDir(box)));
  rmSync(box, { recursive: true });
  // The first call runs at once, the others wait for one shared next fsync: all must see ENOENT.
  const results = await Promise.allSettled(Array.from({ length: 10 }, () => fsyncDir(box)));
  assert.deepEqual(
    results.map((r) => (r.status === 'rejected' ? (r.reason as NodeJS.ErrnoException).code : 'ok')),
    Array(10).fill('ENOENT'),
  );
  // A failure leaves nothing behind that would stall later callers.
  mkdirSync(box);
  await fsyncDir(box);
});

test('files: writeFileAtomic leaves the old file and no temporary file when the writer fails', async () => {
  const dir = tempDir();
  const target = join(dir, 'key.pem');
  await writeFileAtomic(target, async (out) => void out.end('old\n'));
  await assert.rejects(
    writeFileAtomic(target, async (out) => {
      out.write('half');
      throw new Error('writer failed');
    }),
    /writer failed/,
  );
  assert.equal(readFileSync(target, 'utf8'), 'old\n');
  assert.deepEqual(readdirSync(dir), ['key.pem']);
});
