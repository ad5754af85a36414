import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { Utf8Checker } from '../../src/message/utf8.js';

/** The reference: a fatal TextDecoder over the whole input. */
function decoderSays(b: Buffer): boolean {
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(b);
    return true;
  } catch {
    return false;
  }
}

/** The checker fed the input in the given pieces. */
function checkerSays(pieces: Buffer[]): boolean {
  const c = new Utf8Checker();
  for (const p of pieces) if (!c.check(p)) return false;
  return c.end();
}

const samples: Buffer[] = [
  Buffer.from('plain ASCII\n'),
  Buffer.from('Grüße, 日本語, emoji 🎉 and a € sign\n'),
  Buffer.from([0xc3]), // cut 2-byte character
  Buffer.from([0xe2, 0x82]), // cut 3-byte character
  Buffer.from([0xf0, 0x9f, 0x8e]), // cut 4-byte character
  Buffer.from([0xc0, 0x80]), // overlong NUL
  Buffer.from([0xed, 0xa0, 0x80]), // a surrogate
  Buffer.from([0xf4, 0x90, 0x80, 0x80]), // past U+10FFFF
  Buffer.from([0xf8, 0x88, 0x80, 0x80, 0x80]), // a 5-byte form
  Buffer.from([0x80]), // a lone continuation byte
  Buffer.concat([Buffer.from('abc'), Buffer.from([0xff]), Buffer.from('def')]),
  Buffer.concat([Buffer.from('🎉'), Buffer.from([0x9f])]), // one continuation too many
];

test('utf8: the same verdict as a fatal TextDecoder, however the bytes are cut into chunks', () => {
  for (const s of samples) {
    const want = decoderSays(s);
    assert.equal(checkerSays([s]), want, `whole ${s.toString('hex')}`);
    for (let i = 0; i <= s.length; i++) assert.equal(checkerSays([s.subarray(0, i), s.subarray(i)]), want, `${s.toString('hex')} cut at ${i}`);
    assert.equal(checkerSays([...s].map((b) => Buffer.from([b]))), want, `${s.toString('hex')} byte by byte`);
  }
});

test('utf8: random bytes and random valid text in random chunks agree with TextDecoder', () => {
  const text = Buffer.from('Ünïcødé ✓ 🎉 '.repeat(50));
  for (let round = 0; round < 300; round++) {
    const data = round % 2 ? randomBytes(1 + (round % 40)) : Buffer.concat([text.subarray(0, round), round % 4 === 0 ? randomBytes(1) : Buffer.alloc(0)]);
    const pieces: Buffer[] = [];
    for (let at = 0; at < data.length;) {
      const n = 1 + ((at * 7 + round) % 5);
      pieces.push(data.subarray(at, at + n));
      at += n;
    }
    assert.equal(checkerSays(pieces), decoderSays(data), data.toString('hex'));
  }
});
