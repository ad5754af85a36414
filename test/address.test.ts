import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { addressKey, formatAddress, formatAddressList, parseAddress, parseAddressList } from '../src/address.js';

describe('addresses', () => {
  it('parses display names, quoted names with commas, UTF-8 local parts and IDN domains', () => {
    const list = parseAddressList('Alice <alice@a.test>, "Doe, John" <j@b.test>, jörg@bücher.example, plain@c.test');
    assert.deepEqual(
      list.map((a) => a.name),
      ['Alice', 'Doe, John', undefined, undefined],
    );
    assert.equal(list[2].local, 'jörg');
    assert.equal(list[2].asciiDomain, 'xn--bcher-kva.example');
  });
  it('compares IDN domains in ASCII form', () => {
    assert.equal(addressKey(parseAddress('x@BÜCHER.example')), addressKey(parseAddress('x@xn--bcher-kva.example')));
  });
  const bad: [string, RegExp][] = [
    ['nobody', /not an address/],
    ['a@b', /invalid domain/],
    ['-rf@a.test', /must not start with "-"/],
    ['a/b@a.test', /bad character/],
    ['a..b@a.test', /misplaced dot/],
    ['a@[127.0.0.1]', /address literal/],
    ['"unterminated <a@a.test>', /unterminated|quoted/],
    ['a\n@a.test', /control character/],
    [`${'x'.repeat(65)}@a.test`, /longer than 64/],
  ];
  for (const [text, pattern] of bad) it(`rejects ${JSON.stringify(text)}`, () => assert.throws(() => parseAddress(text), pattern));

  it('format then parse is the identity (property)', () => {
    const name = fc.string({ unit: fc.constantFrom(...'Ab Cd,"\\é.'.split('')), maxLength: 12 }).map((s) => s.trim());
    const local = fc.stringMatching(/^[a-z0-9][a-z0-9+_=]{0,12}$/);
    const domain = fc.constantFrom('a.test', 'bücher.example', 'xn--bcher-kva.example', 'mail.b.test');
    fc.assert(
      fc.property(fc.array(fc.tuple(name, local, domain), { minLength: 1, maxLength: 4 }), (items) => {
        const list = items.map(([n, l, d]) => parseAddress(n && !/^\s|\s$/.test(n) ? `${JSON.stringify(n)} <${l}@${d}>` : `${l}@${d}`));
        const again = parseAddressList(formatAddressList(list));
        assert.deepEqual(again, list);
        for (const a of list) assert.deepEqual(parseAddress(formatAddress(a)), a);
      }),
    );
  });
});
