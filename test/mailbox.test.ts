import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
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
  // Each session answers for every id it was given that is now seen, whoever moved it.
  assert.deepEqual([a, b], [6, 6]);
  assert.deepEqual(readdirSync(join(dir, 'cur')).sort(), [...ids].sort());
  assert.deepEqual(readdirSync(join(dir, 'new')), []);
});

/** A mailbox with one message (headers, body, attachments/a.txt) and its path. */
function withMessage(): { dir: string; id: string; path: string } {
  const { dir, ids } = mailboxWith(1);
  const path = join(dir, 'new', ids[0]);
  writeFileSync(join(path, 'headers'), 'from: a@a.test\n');
  writeFileSync(join(path, 'body'), 'hello\n');
  mkdirSync(join(path, 'attachments'));
  writeFileSync(join(path, 'attachments', 'a.txt'), 'mine\n');
  return { dir, id: ids[0], path };
}

const readAll = async (s: Readable | Buffer) => {
  if (Buffer.isBuffer(s)) return s;
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
};

/** Someone else's file, which a link planted in the mailbox points at. */
function secret(): string {
  const other = tempDir();
  mkdirSync(join(other, 'attachments'));
  writeFileSync(join(other, 'attachments', 'a.txt'), 'SECRET of another user\n');
  writeFileSync(join(other, 'body'), 'SECRET body\n');
  return other;
}

test('post-office read path: an attachments/ that is a link into another mailbox is refused, not listed', async () => {
  const { dir, path } = withMessage();
  rmSync(join(path, 'attachments'), { recursive: true });
  symlinkSync(join(secret(), 'attachments'), join(path, 'attachments'));
  await assert.rejects(new Mailbox(dir).entries(path), /attachments: a symbolic link or not a plain file or directory \(refused\)/);
});

test('post-office read path: a file swapped for a link after it was listed is not followed when it is opened (O_NOFOLLOW)', async () => {
  const { dir, path } = withMessage();
  const box = new Mailbox(dir);
  const entries = await box.entries(path);
  assert.deepEqual(
    entries.map((e) => e.path),
    ['headers', 'body', 'attachments/a.txt'],
  );
  const other = secret();
  for (const [file, target] of [
    ['body', join(other, 'body')],
    ['attachments/a.txt', join(other, 'attachments', 'a.txt')],
  ]) {
    rmSync(join(path, file));
    symlinkSync(target, join(path, file));
  }
  for (const e of entries.slice(1)) await assert.rejects(readAll(e.open()), /a symbolic link or not a plain file/, e.path);
  await assert.rejects(box.readEntry(path, 'body'), /a symbolic link/);
});

test('post-office read path: a FIFO in place of a file is refused at once (no hang), a linked folder or message is not a message', async () => {
  const { dir, id, path } = withMessage();
  rmSync(join(path, 'body'));
  const fifo = spawnSync('mkfifo', [join(path, 'body')]);
  assert.equal(fifo.status, 0, String(fifo.stderr));
  await assert.rejects(new Mailbox(dir).entries(path), /body: not a regular file/);
  // A message directory that is a link, and a folder that is a link.
  const { dir: other, ids } = mailboxWith(1);
  symlinkSync(join(other, 'new', ids[0]), join(dir, 'cur', ids[0]));
  assert.equal(await new Mailbox(dir).locate(ids[0]), undefined);
  rmSync(join(dir, 'cur', ids[0]));
  rmSync(join(dir, 'cur'), { recursive: true });
  symlinkSync(join(other, 'new'), join(dir, 'cur'));
  await assert.rejects(new Mailbox(dir).ids('cur'), /a symbolic link/);
  assert.deepEqual(await new Mailbox(dir).ids('new'), [id]);
});
