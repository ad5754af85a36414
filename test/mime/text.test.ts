import assert from 'node:assert/strict';
import { isUtf8 } from 'node:buffer';
import { describe, it } from 'node:test';
import { once } from 'node:events';
import { Readable } from 'node:stream';
import { CrlfToLf, Utf8Validator, lfTextOf } from '../../src/mime/text.js';
import { BufferPool } from '../../src/spool.js';

/** Everything a transform gives for input cut into the given pieces. */
async function through(t: CrlfToLf | Utf8Validator, pieces: Buffer[]): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const c of Readable.from(pieces).pipe(t)) out.push(c as Buffer);
  return Buffer.concat(out);
}

/** Every way of cutting b in two, and b cut after every byte. */
function cuttings(b: Buffer): Buffer[][] {
  const all: Buffer[][] = [[b], Array.from(b, (_, i) => b.subarray(i, i + 1))];
  for (let i = 1; i < b.length; i++) all.push([b.subarray(0, i), b.subarray(i)]);
  return all;
}

describe('CrlfToLf', () => {
  const text = Buffer.from('one\r\ntwo\rthree\r\n\r\nfour\r\r\nfive\n\r', 'latin1');

  it('makes each CRLF an LF and each lone CR an LF (loneCr: lf), however the text is cut', async () => {
    for (const pieces of cuttings(text)) {
      const t = new CrlfToLf({ loneCr: 'lf' });
      assert.equal((await through(t, pieces)).toString('latin1'), 'one\ntwo\nthree\n\nfour\n\nfive\n\n', `cut ${pieces.map((p) => p.length)}`);
      assert.equal(t.lastByte, 0x0a);
    }
  });

  it('keeps a lone CR by default, however the text is cut', async () => {
    for (const pieces of cuttings(text)) {
      assert.equal((await through(new CrlfToLf(), pieces)).toString('latin1'), 'one\ntwo\rthree\n\nfour\r\nfive\n\r', `cut ${pieces.map((p) => p.length)}`);
    }
  });

  it('passes text without CR through as it is, and every other byte unchanged', async () => {
    const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i).filter((i) => i !== 0x0d));
    assert.deepEqual(await through(new CrlfToLf({ loneCr: 'lf' }), [bytes]), bytes);
    const t = new CrlfToLf();
    assert.deepEqual(await through(t, [Buffer.from('a\r\n\xff\r\n', 'latin1')]), Buffer.from('a\n\xff\n', 'latin1'));
    assert.equal(t.lastByte, 0x0a);
  });
});

describe('lfTextOf', () => {
  it('says what CrlfToLf (loneCr: lf) makes of the text, size and last byte, and whether it is UTF-8, however it is cut', async () => {
    const texts = ['one\r\ntwo\rthree\r\r\nfour, grüße\r', 'a\n\r\n\r', 'no line end, 🙂', ''];
    for (const bytes of [...texts.map((t) => Buffer.from(t)), Buffer.from('gr\xfc\xdfe\r\n', 'latin1'), Buffer.from('ok 🙂').subarray(0, 5)]) {
      const made = await through(new CrlfToLf({ loneCr: 'lf' }), [bytes]);
      for (const pieces of cuttings(bytes)) {
        const where = `${JSON.stringify(bytes.toString('latin1'))} cut ${pieces.map((p) => p.length)}`;
        const counted = await lfTextOf(Readable.from(pieces));
        assert.equal(counted.size, made.length, where);
        assert.equal(counted.last, made.length ? made[made.length - 1] : -1, where);
        assert.equal(counted.utf8, isUtf8(bytes), where);
      }
    }
  });
});

describe('CrlfToLf on chunks lent from a pool', () => {
  it('changes each where it is and passes what is left of it on in its place; one left empty goes back to the pool', async () => {
    const pool = new BufferPool(64);
    const lend = (text: string) => {
      const b = pool.take();
      return pool.passOn(b.subarray(0, b.write(text, 'latin1')));
    };
    const lent = [lend('one\r\ntwo\r'), lend('\nthree\r\n'), lend('\r')];
    // Each chunk as it is pushed ('data'): an async iterator would join those waiting into a new buffer.
    const out: Buffer[] = [];
    const t = Readable.from(lent).pipe(new CrlfToLf({ loneCr: 'lf', pool }));
    t.on('data', (c: Buffer) => out.push(c));
    await once(t, 'end');
    assert.equal(Buffer.concat(out).toString('latin1'), 'one\ntwo\nthree\n\n');
    assert.equal(out[0].buffer, lent[0].buffer, 'the first chunk changed where it is');
    assert.ok(pool.passedOn(out[0]) && pool.passedOn(out[1]), 'and passed on in place of the lent view');
    assert.ok(pool.hasFree, 'the chunk of a lone CR, empty after it, was handed back');
  });
});

describe('Utf8Validator', () => {
  const good = Buffer.from('grüße, 日本, 🙂\n');

  it('takes UTF-8 cut anywhere, a character split between chunks included, and passes the bytes on unchanged', async () => {
    for (const pieces of cuttings(good)) {
      const v = new Utf8Validator();
      assert.deepEqual(await through(v, pieces), good);
      assert.equal(v.valid, true, `cut ${pieces.map((p) => p.length)}`);
    }
  });

  it('refuses Latin-1, a surrogate, an overlong form and text that ends inside a character', async () => {
    for (const bad of [Buffer.from('grüße', 'latin1'), Buffer.from([0x61, 0xed, 0xa0, 0x80]), Buffer.from([0xc0, 0xaf]), good.subarray(0, good.length - 3)]) {
      for (const pieces of cuttings(bad)) {
        const v = new Utf8Validator();
        assert.deepEqual(await through(v, pieces), bad);
        assert.equal(v.valid, false, `${bad.toString('hex')} cut ${pieces.map((p) => p.length)}`);
      }
    }
  });
});
