import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, renameSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Maildir } from '../src/maildir.js';
import { tempDir } from './helpers.js';

const ID = '7639f84a-faa9-5f7e-a3a9-db428e9fb00c';
const write = (text: string) => async (out: NodeJS.WritableStream) => void out.end(text);

describe('Maildir', () => {
  it('creates tmp/ new/ cur/ (0700) and stores a message whole in new/, nothing left in tmp/', async () => {
    const dir = join(tempDir(), 'Maildir');
    const md = await Maildir.open(dir);
    assert.equal(await md.deliver(ID, write('Subject: x\n\nhello\n')), true);
    for (const f of ['tmp', 'new', 'cur']) assert.equal(statSync(join(dir, f)).mode & 0o777, 0o700);
    assert.equal(readFileSync(join(dir, 'new', ID), 'utf8'), 'Subject: x\n\nhello\n');
    assert.deepEqual(readdirSync(join(dir, 'tmp')), []);
  });
  it('stores a message once: again in the same run, in a later run, and after a reader moved it to cur/ with flags', async () => {
    const dir = join(tempDir(), 'Maildir');
    const md = await Maildir.open(dir);
    assert.equal(await md.deliver(ID, write('one')), true);
    assert.equal(await md.deliver(ID, write('two')), false);
    renameSync(join(dir, 'new', ID), join(dir, 'cur', `${ID}:2,S`));
    const again = await Maildir.open(dir);
    assert.equal(await again.deliver(ID, write('three')), false);
    assert.deepEqual(readdirSync(join(dir, 'new')), []);
    assert.equal(readFileSync(join(dir, 'cur', `${ID}:2,S`), 'utf8'), 'one');
  });
  it('a message another run stored meanwhile is not replaced (link, not rename)', async () => {
    const dir = join(tempDir(), 'Maildir');
    const a = await Maildir.open(dir);
    const b = await Maildir.open(dir);
    assert.equal(await a.deliver(ID, write('first')), true);
    assert.equal(await b.deliver(ID, write('second')), false);
    assert.equal(readFileSync(join(dir, 'new', ID), 'utf8'), 'first');
    assert.deepEqual(readdirSync(join(dir, 'tmp')), []);
  });
  it('a writer that fails leaves nothing behind', async () => {
    const dir = join(tempDir(), 'Maildir');
    const md = await Maildir.open(dir);
    await assert.rejects(
      md.deliver(ID, async (out) => {
        out.write('half');
        throw new Error('disk trouble');
      }),
      /disk trouble/,
    );
    assert.deepEqual(readdirSync(join(dir, 'tmp')), []);
    assert.equal(existsSync(join(dir, 'new', ID)), false);
    assert.equal(await md.deliver(ID, write('whole')), true, 'and a later try stores it');
  });
  it('refuses a name that is not a plain file name', async () => {
    const md = await Maildir.open(join(tempDir(), 'Maildir'));
    await assert.rejects(md.deliver('../x', write('x')));
    await assert.rejects(md.deliver('a:2,S', write('x')));
  });
});
