import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { Mailbox } from '../src/mailbox.js';
import { tempDir } from './helpers.js';

function mailboxWith(n: number): { dir: string; ids: string[] } {
  const dir = tempDir();
  for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(dir, f));
  const ids = Array.from({ length: n }, () => randomUUID());
  for (const id of ids) mkdirSync(join(dir, 'new', id));
  return { dir, ids };
}

test('imrp: two sessions deleting the same messages at once both answer, and each message counts once', async () => {
  const { dir, ids } = mailboxWith(6);
  const [a, b] = await Promise.all([new Mailbox(dir).remove(ids), new Mailbox(dir).remove(ids)]);
  assert.equal(a + b, 6);
  assert.deepEqual(readdirSync(join(dir, 'new')), []);
  assert.deepEqual(readdirSync(join(dir, 'tmp')), [], 'removed, not left in tmp/');
});

test('imrp: two sessions marking the same messages seen at once both answer, and every message ends in cur/', async () => {
  const { dir, ids } = mailboxWith(6);
  const [a, b] = await Promise.all([new Mailbox(dir).markSeen(ids), new Mailbox(dir).markSeen(ids)]);
  assert.ok(a + b >= 6, `every message counted by one session at least (${a} + ${b})`);
  assert.deepEqual(readdirSync(join(dir, 'cur')).sort(), [...ids].sort());
  assert.deepEqual(readdirSync(join(dir, 'new')), []);
});
