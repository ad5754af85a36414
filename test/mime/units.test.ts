import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatMimeDate, parseMimeDate } from '../../src/mime/date.js';
import { foldHeader } from '../../src/mime/fold.js';
import { imaIdOf, messageIds } from '../../src/mime/ids.js';
import { AttachmentNames, cleanName, formatContentIds, parseContentIds } from '../../src/mime/names.js';
import { LEGACY_NAMESPACE, uuidV5 } from '../../src/mime/uuid.js';

describe('uuidV5', () => {
  it('gives the RFC 9562 test vector (A.4: DNS namespace, www.example.com)', () => {
    assert.equal(uuidV5('6ba7b810-9dad-11d1-80b4-00c04fd430c8', 'www.example.com'), '2ed6657d-e927-568b-95e1-2665a8aea6a2');
  });
  it('maps a legacy Message-ID to the same urn:uuid: every time, in the stated namespace', () => {
    assert.equal(imaIdOf('abc@example.org'), `urn:uuid:${uuidV5(LEGACY_NAMESPACE, 'abc@example.org')}`);
    assert.equal(imaIdOf('abc@example.org'), imaIdOf('abc@example.org'));
    assert.notEqual(imaIdOf('abc@example.org'), imaIdOf('abd@example.org'));
  });
  it('maps the <UUID@domain> that ima-to-mime writes back to that UUID', () => {
    assert.equal(imaIdOf('7639f84a-faa9-5f7e-a3a9-db428e9fb00c@a.test'), 'urn:uuid:7639f84a-faa9-5f7e-a3a9-db428e9fb00c');
    assert.notEqual(imaIdOf('7639F84A-FAA9-5F7E-A3A9-DB428E9FB00C@a.test'), 'urn:uuid:7639f84a-faa9-5f7e-a3a9-db428e9fb00c');
  });
});

describe('messageIds', () => {
  for (const [value, ids] of [
    ['<a@b>', ['a@b']],
    ['<a@b> <c@d>\t<e@f>', ['a@b', 'c@d', 'e@f']],
    ['<a@b> (the message of Tuesday)', ['a@b']],
    ['bare@id', ['bare@id']],
    ['<>', []],
    ['PM20008:51:38 PM', []],
    ['', []],
  ] as const) {
    it(`${JSON.stringify(value)} -> ${JSON.stringify(ids)}`, () => assert.deepEqual(messageIds(value), ids));
  }
});

describe('parseMimeDate keeps the offset', () => {
  for (const [text, want] of [
    ['Tue, 1 Nov 2022 10:00:00 +0100', '2022-11-01T10:00:00+01:00'],
    ['Tue, 01 Nov 2022 10:00:00 +0100 (CET)', '2022-11-01T10:00:00+01:00'],
    ['1 Nov 2022 10:00 -0530', '2022-11-01T10:00:00-05:30'],
    ['Fri, 02 Aug 02 23:37:59 GMT', '2002-08-02T23:37:59+00:00'],
    ['Mon, 2 Sep 2002 07:19:53 EDT', '2002-09-02T07:19:53-04:00'],
    ['Mon, 2 Sep 2002 07:19:53 -0000', '2002-09-02T07:19:53-00:00'],
    ['Mon, 2 Sep 2002 07:19:53 CEST', '2002-09-02T07:19:53-00:00'],
    ['Thu, 29 Feb 2024 23:59:59 +0000', '2024-02-29T23:59:59+00:00'],
  ] as const) {
    it(text, () => assert.equal(parseMimeDate(text), want));
  }
  for (const bad of [
    'Fri, 02 Aug 2002 23:37:59 0530',
    'yesterday',
    'Thu, 30 Feb 2023 10:00:00 +0000',
    'Mon, 2 Sep 2002 25:00:00 +0000',
    '2002-09-02 07:19:53',
  ]) {
    it(`refuses ${JSON.stringify(bad)}`, () => assert.equal(parseMimeDate(bad), undefined));
  }
  it('formats back in the same offset, and both ways agree', () => {
    assert.equal(formatMimeDate('2022-11-01T10:00:00+01:00'), 'Tue, 1 Nov 2022 10:00:00 +0100');
    assert.equal(formatMimeDate('2026-11-23T00:00:00Z'), 'Mon, 23 Nov 2026 00:00:00 +0000');
    assert.equal(formatMimeDate('2002-09-02T07:19:53-00:00'), 'Mon, 2 Sep 2002 07:19:53 -0000');
    assert.equal(parseMimeDate(formatMimeDate('2022-11-01T10:00:00-09:30')!), '2022-11-01T10:00:00-09:30');
  });
});

describe('attachment names', () => {
  for (const [given, want] of [
    ['report.pdf', 'report.pdf'],
    ['../../etc/passwd', '....etcpasswd'],
    ['C:\\Users\\x\\a.doc', 'C:Usersxa.doc'],
    ['a\u0000b\u0007c.txt', 'abc.txt'],
    ['gpj.\u202Eexe', 'gpj.exe'],
    ['Cafe\u0301.txt', 'Café.txt'],
    ['..', undefined],
    ['.', undefined],
    ['/', undefined],
    ['  ', undefined],
  ] as const) {
    it(`${JSON.stringify(given)} -> ${JSON.stringify(want)}`, () => assert.equal(cleanName(given), want));
  }
  it('caps a name at 255 bytes keeping its extension and whole characters', () => {
    const n = cleanName(`${'é'.repeat(300)}.pdf`)!;
    assert.ok(Buffer.byteLength(n) <= 255);
    assert.ok(n.endsWith('é.pdf'));
  });
  it('makes names unique and derives missing ones from the content type', () => {
    const names = new AttachmentNames();
    assert.deepEqual(
      [
        names.name('report.pdf', 'application/pdf'),
        names.name('report.pdf', 'application/pdf'),
        names.name(undefined, 'application/pdf'),
        names.name(undefined, 'image/png'),
        names.name(undefined, 'message/rfc822'),
        names.name('forwarded', 'message/rfc822'),
        names.name('attachment-1.pdf', 'application/pdf'),
        names.name(undefined, 'text/calendar'),
      ],
      ['report.pdf', 'report-2.pdf', 'attachment-1.pdf', 'attachment-2.png', 'attachment-3.eml', 'forwarded.eml', 'attachment-1-2.pdf', 'attachment-4.ics'],
    );
  });
  it('mime-content-ids survives names and ids with spaces, "=" and "%"', () => {
    const ids = new Map([
      ['my logo=1.png', 'a b%c=d@x'],
      ['plain.png', 'p@x'],
    ]);
    const text = formatContentIds(ids);
    assert.doesNotMatch(text, /\s{2}|^\s|\s$/);
    assert.deepEqual(parseContentIds(text), ids);
  });
});

describe('foldHeader', () => {
  const unfold = (folded: string) => folded.replace(/\r\n(?=[ \t])/g, '');
  const lines = (folded: string) => folded.split('\r\n');
  it('folds before a space or tab only, within 78 octets where it can, and unfolds to the text', () => {
    const text = `Subject: ${Array.from({ length: 40 }, (_, i) => `w${i}\u00a0x\u3000y`).join(' ')}\tend`;
    const folded = foldHeader(text);
    assert.equal(unfold(folded), text);
    assert.ok(lines(folded).length > 5);
    for (const l of lines(folded).slice(1)) assert.match(l, /^[ \t]\S/);
    for (const l of lines(folded)) assert.ok(Buffer.byteLength(l) <= 78, l);
  });
  it('never makes a line of white space only, nor one over 998 octets: a longer run is cut in whole characters', () => {
    assert.equal(unfold(foldHeader(`Subject: a${' '.repeat(100)}b`)), `Subject: a${' '.repeat(100)}b`);
    for (const l of lines(foldHeader(`Subject: a${' '.repeat(100)}b`))) assert.match(l, /\S/);
    const long = `X-Long: ${'é'.repeat(1200)}`;
    const folded = foldHeader(long);
    for (const l of lines(folded)) assert.ok(Buffer.byteLength(l) <= 998, `${Buffer.byteLength(l)} octets`);
    assert.equal(unfold(folded).replaceAll(' ', ''), long.replaceAll(' ', ''), 'the text, with a space where a run was cut');
    assert.doesNotMatch(folded, /\uFFFD/);
  });
});
