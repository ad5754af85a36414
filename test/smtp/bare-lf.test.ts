import assert from 'node:assert/strict';
import { Readable, Writable, pipeline } from 'node:stream';
import { describe, it } from 'node:test';
import { BareLfGuard, bareLfAt } from '../../src/smtp/bare-lf.js';

const through = (chunks: string[]) =>
  new Promise<Error | undefined>((res) =>
    pipeline(Readable.from(chunks.map((c) => Buffer.from(c))), new BareLfGuard(), new Writable({ write: (_c, _e, cb) => cb() }), (e) => res(e ?? undefined)),
  );

describe('bare LF', () => {
  it('finds an LF without CR, with the byte before the chunk carried over', () => {
    assert.equal(bareLfAt(Buffer.from('a\r\nb\r\n'), 0x0a), -1);
    assert.equal(bareLfAt(Buffer.from('a\nb'), 0x0a), 1);
    assert.equal(bareLfAt(Buffer.from('\nb'), 0x0d), -1);
    assert.equal(bareLfAt(Buffer.from('\nb'), 0x61), 0);
  });

  it('DATA: a CRLF split across chunks passes; a bare LF at a chunk start or end is refused with 5.5.2', async () => {
    assert.equal(await through(['one\r', '\ntwo\r\n']), undefined);
    const e = await through(['one\r\n', '\n.\n']);
    assert.equal((e as { status?: string }).status, '5.5.2');
    assert.ok(await through(['one', '\n']));
    assert.ok(await through(['\n'])); // the data starts after "DATA\r\n": a leading LF is bare
  });
});
