import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { Failure } from '../../src/failure.js';
import { DEFAULT_LIMITS } from '../../src/message/index.js';
import { MIME_LIMITS, readMime } from '../../src/mime/to-ima.js';
import { mime, one, readIma, toIma, toMime } from './helpers.js';

/** MIME -> IMA -> MIME -> IMA gives the same IMA bytes; returns the first IMA message read. */
async function stable(message: Buffer | string) {
  const ima1 = await toIma(message);
  const ima2 = await toIma(await toMime(ima1));
  assert.equal(ima2.toString('latin1'), ima1.toString('latin1'), 'MIME -> IMA -> MIME -> IMA is the identity on the IMA side');
  return readIma(ima1);
}

const BASIC = [
  'From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <joerg@example.org>',
  'To: "Doe, John" <john@b.test>, carol@xn--bcher-kva.example',
  'Subject: =?iso-8859-1?q?Gr=FC=DFe?= aus',
  ' Berlin',
  'Date: Tue, 1 Nov 2022 10:00:00 +0100',
  'Message-ID: <abc.123@example.org>',
  'In-Reply-To: <prev@example.org>',
  'References: <first@example.org>',
  '\t<prev@example.org>',
  'X-Mailer: Foo 1.0',
  'MIME-Version: 1.0',
  'Content-Type: text/plain; charset=iso-8859-1',
  'Content-Transfer-Encoding: quoted-printable',
];

describe('mime-to-ima maps headers (ima-mime(7))', () => {
  it('decodes encoded-words, unfolds, parses addresses, keeps the date offset and maps ids to urn:uuid:', async () => {
    const m = await stable(mime(BASIC, 'Hallo W=F6rld=\r\n!\r\n'));
    assert.equal(one(m, 'from'), 'Jörg Müller <joerg@example.org>');
    assert.equal(one(m, 'to'), '"Doe, John" <john@b.test>, carol@bücher.example');
    assert.equal(one(m, 'subject'), 'Grüße aus Berlin');
    assert.equal(one(m, 'date'), '2022-11-01T10:00:00+01:00');
    assert.equal(m.headers['mime-date'], undefined, 'a date ima-to-mime writes the same way is not kept twice');
    assert.match(one(m, 'message-id')!, /^urn:uuid:[0-9a-f-]{36}$/);
    assert.equal(one(m, 'mime-message-id'), '<abc.123@example.org>');
    assert.equal(one(m, 'references')!.split(' ')[1], one(m, 'in-reply-to'));
    assert.equal(one(m, 'x-mailer'), 'Foo 1.0');
    assert.equal(m.headers['mime-version'], undefined);
    assert.equal(m.headers['content-type'], undefined);
    assert.equal(m.files.get('body')!.toString(), 'Hallo Wörld!\n');
  });
  it('ends a text body with exactly one line end, small (in memory) or large (spooled), whatever the line ends came as', async () => {
    const line = `${'z'.repeat(70)}\r\n`;
    const big = line.repeat(Math.ceil((3 * 1024 * 1024) / line.length));
    const cases: [string, string, string][] = [
      ['small, no final line end', 'short text', 'short text\n'],
      ['small, CRLF at the end', 'short text\r\n', 'short text\n'],
      ['large, no final line end', `${big}last`, `${big.replace(/\r\n/g, '\n')}last\n`],
      ['large, CRLF at the end', big, big.replace(/\r\n/g, '\n')],
      ['large, a lone CR at the end', `${big}cr\r`, `${big.replace(/\r\n/g, '\n')}cr\n`],
    ];
    for (const [what, text, want] of cases) {
      const m = await readIma(await toIma(mime(['From: a@a.test', 'Subject: ends', 'Content-Type: text/plain; charset=utf-8'], text)));
      const got = m.files.get('body')!.toString();
      assert.equal(got.length, want.length, what);
      assert.ok(got === want, `${what}: the body as expected`);
    }
  });
  it('converts the line ends of a large (spooled) text read in pieces: a CRLF cut between two reads, lone CRs, CR CR LF', async () => {
    // The spool is read 512 KiB at a time: the CR of one CRLF ends the first read, its LF starts the second.
    const filler = `${'z'.repeat(70)}\r\n`.repeat(7281);
    const cutCrlf = `${'c'.repeat(55)}\r\n`;
    const odd = 'lone\rcr\r\r\nend\r\n'.repeat(60_000);
    const text = filler + cutCrlf + odd;
    assert.equal(Buffer.byteLength(filler + cutCrlf.slice(0, -1)), 512 * 1024);
    const m = await readIma(await toIma(mime(['From: a@a.test', 'Subject: pieces', 'Content-Type: text/plain; charset=utf-8'], text)));
    const got = m.files.get('body')!.toString();
    const want = text.replace(/\r\n?/g, '\n');
    assert.equal(got.length, want.length);
    assert.ok(got === want, 'the body as expected');
  });
  it('gives the same legacy message the same IMA id, whatever its line ends', async () => {
    const crlf = mime(BASIC, 'x\r\n');
    const lf = Buffer.from(crlf.toString().replace(/\r\n/g, '\n'));
    assert.equal(one(await readIma(await toIma(crlf)), 'message-id'), one(await readIma(await toIma(lf)), 'message-id'));
  });
  it('gives a message without a Message-ID the id of its digest: the same bytes the same id, other bytes another', async () => {
    const a = mime(['From: a@a.test', 'Subject: no id'], 'one\r\n');
    const b = mime(['From: a@a.test', 'Subject: no id'], 'two\r\n');
    const idA = one(await stable(a), 'message-id');
    assert.equal(one(await readIma(await toIma(a)), 'message-id'), idA);
    assert.notEqual(one(await readIma(await toIma(b)), 'message-id'), idA);
  });
  it('keeps what it cannot parse in mime-* fields, never drops it', async () => {
    const m = await stable(
      mime(
        [
          'From: Someone <not an address>',
          'To: undisclosed-recipients:;',
          'Cc: ok@c.test, broken@@x',
          'Date: sometime last week',
          'Message-Id: PM20008:51:38 PM',
          'X_Odd_Name: 1',
          'Mailer: claims to be an IMA server',
          'Mime-Version: 1.0',
          'Subject: s',
          'Subject: a second subject',
        ],
        'text\r\n',
      ),
    );
    assert.equal(one(m, 'from'), undefined);
    assert.equal(one(m, 'mime-from'), 'Someone <not an address>');
    assert.equal(one(m, 'mime-to'), 'undisclosed-recipients:;');
    assert.equal(one(m, 'cc'), 'ok@c.test');
    assert.equal(one(m, 'mime-cc'), 'ok@c.test, broken@@x');
    assert.equal(one(m, 'date'), undefined);
    assert.equal(one(m, 'mime-date'), 'sometime last week');
    assert.match(one(m, 'message-id')!, /^urn:uuid:/);
    assert.deepEqual(m.headers['mime-header'], [
      'X_Odd_Name: 1',
      'Mailer: claims to be an IMA server',
      'Subject: a second subject',
      'Message-ID: PM20008:51:38 PM',
    ]);
    assert.equal(one(m, 'mailer'), undefined, 'a legacy header never sets the IMA mailer');
    assert.equal(one(m, 'subject'), 's');
  });
  it('reads 8-bit header bytes as UTF-8, or as windows-1252 when they are not', async () => {
    const raw = Buffer.concat([Buffer.from('From: a@a.test\r\nSubject: caf'), Buffer.from([0xe9]), Buffer.from('\r\nX-Utf8: caf\u00e9\r\n\r\nx\r\n')]);
    const m = await stable(raw);
    assert.equal(one(m, 'subject'), 'café');
    assert.equal(one(m, 'x-utf8'), 'café');
    // 0x80-0x9F are where windows-1252 differs from Latin-1: quotes and the euro sign, not C1 controls.
    const quotes = Buffer.concat([
      Buffer.from('From: a@a.test\r\nSubject: '),
      Buffer.from([0x93, 0x68, 0x69, 0x94, 0x20, 0x35, 0x80, 0x85]),
      Buffer.from('\r\n\r\nx\r\n'),
    ]);
    assert.equal(one(await stable(quotes), 'subject'), '\u201chi\u201d 5\u20ac\u2026');
  });
  it('a long header with no-break or ideographic spaces comes back whole: folded only before a space or tab', async () => {
    // Kept verbatim (UTF-8) as repeats: a fold before U+00A0 or U+3000 made a line that is no continuation,
    // and the next conversion cut the header there.
    const words = Array.from({ length: 30 }, (_, i) => `word${i}`);
    const [nbsp, ideographic] = [words.join('\u00a0'), `${words.join('\u3000')} and then ${words.join(' ')}`];
    const message = mime(['From: a@a.test', 'Subject: first', `Subject: ${nbsp}`, `Subject: ${ideographic}`], 'x\r\n');
    const m = await stable(message);
    assert.deepEqual(m.headers['mime-header'], [`Subject: ${nbsp}`, `Subject: ${ideographic}`]);
    const head = (await toMime(await toIma(message))).toString().split('\n\n')[0].split('\n');
    for (const l of head) assert.match(l, /^([A-Za-z-]+:|[ \t]\S)/, 'a header or a continuation');
    for (const l of head) assert.ok(Buffer.byteLength(l) <= 998, l);
  });
  it('writes decoded text that looks like an encoded-word so that it is not decoded a second time', async () => {
    // An encoded-word whose text is itself "=?utf-8?q?hi?=" (enmime's qp-utf8-header-recursed.eml does this in a From).
    const word = (text: string) => `=?us-ascii?q?${text.replace(/[=?_]/g, (c) => `=${c.charCodeAt(0).toString(16).toUpperCase()}`)}?=`;
    const m = await stable(
      mime(
        [
          `From: ${word('=?utf-8?q?Ann?=')} <a@example.com>`,
          `To: b@example.com, ${word('=?utf-8?q?hi?=')} <@bad>`,
          `Subject: ${word('=?utf-8?q?hi?= =?utf-8?q?there?=')} in a =?utf-8?q?caf=C3=A9?=`,
          `X-Note: ${word('=?utf-8?b?eW8=?=')}`,
          `Mailer: ${word('=?utf-8?q?x?=')}`,
          'Message-ID: <1@example.com>',
        ],
        'hi\r\n',
      ),
    );
    assert.equal(one(m, 'subject'), '=?utf-8?q?hi?= =?utf-8?q?there?= in a café');
    assert.equal(one(m, 'from'), '=?utf-8?q?Ann?= <a@example.com>');
    assert.equal(one(m, 'x-note'), '=?utf-8?b?eW8=?=');
    assert.equal(one(m, 'mime-to'), 'b@example.com, =?utf-8?q?hi?= <@bad>');
    assert.equal(one(m, 'mime-header'), 'Mailer: =?utf-8?q?x?=');
  });
  it('keeps a B encoded-word whose text is not base64 as written, and decodes the words around it', async () => {
    const m = await stable(mime(['From: a@a.test', 'Subject: =?utf-8?q?caf=C3=A9?= =?utf-8?b?!!!?= end', 'Message-ID: <2@example.com>'], 'hi\r\n'));
    assert.equal(one(m, 'subject'), 'café =?utf-8?b?!!!?= end');
  });
  it('threads a legacy reply to a message ima-to-mime wrote back to its IMA id', async () => {
    const m = await readIma(await toIma(mime(['From: x@legacy.test', 'In-Reply-To: <7639f84a-faa9-5f7e-a3a9-db428e9fb00c@a.test>'], 'reply\r\n')));
    assert.equal(one(m, 'in-reply-to'), 'urn:uuid:7639f84a-faa9-5f7e-a3a9-db428e9fb00c');
  });
});

const MULTI = [
  'From: a@a.test',
  'To: b@b.test',
  'Subject: parts',
  'Message-ID: <parts@a.test>',
  'MIME-Version: 1.0',
  'Content-Type: multipart/mixed; boundary="XX"',
  '',
  '--XX',
  'Content-Type: multipart/alternative; boundary="YY"',
  '',
  '--YY',
  'Content-Type: text/plain; charset=koi8-r',
  'Content-Transfer-Encoding: 8bit',
  '',
  '\xf0\xd2\xc9\xd7\xc5\xd4',
  '--YY',
  'Content-Type: multipart/related; boundary="ZZ"',
  '',
  '--ZZ',
  'Content-Type: text/html; charset=utf-8',
  '',
  '<p>logo: <img src="cid:logo@a.test"></p>',
  '--ZZ',
  'Content-Type: image/png',
  'Content-ID: <logo@a.test>',
  'Content-Transfer-Encoding: base64',
  '',
  'iVBORw0KGgoAAAANSUhEUg==',
  '--ZZ--',
  '--YY--',
  '--XX',
  'Content-Type: application/pdf',
  "Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf",
  'Content-Transfer-Encoding: base64',
  '',
  'JVBERi0xLjQK',
  '--XX',
  'Content-Type: application/pdf; name="../../r\xc3\xa9sum\xc3\xa9.pdf"',
  'Content-Transfer-Encoding: base64',
  '',
  'JVBERi0xLjUK',
  '--XX',
  'Content-Type: message/rfc822',
  '',
  'From: inner@x.test',
  'Subject: forwarded',
  '',
  'inner body',
  '--XX',
  'Content-Type: text/plain; charset=utf-8',
  'Content-Disposition: inline',
  '',
  'a second text part',
  '--XX',
  'Content-Type: text/calendar; method=REQUEST',
  '',
  'BEGIN:VCALENDAR',
  'END:VCALENDAR',
  '--XX--',
  '',
];

describe('mime-to-ima maps parts', () => {
  const message = Buffer.from(MULTI.join('\r\n'), 'latin1');
  it('first text/plain -> body (charset to UTF-8), first text/html -> body.html, every other leaf -> attachments/NAME', async () => {
    const m = await stable(message);
    assert.equal(m.files.get('body')!.toString(), 'Привет');
    assert.equal(m.files.get('body.html')!.toString(), '<p>logo: <img src="cid:logo@a.test"></p>');
    assert.deepEqual(
      [...m.files.keys()].filter((k) => k.startsWith('attachments/')),
      [
        'attachments/....résumé.pdf',
        'attachments/attachment-1.png',
        'attachments/attachment-2.eml',
        'attachments/attachment-3.txt',
        'attachments/attachment-4.ics',
        'attachments/résumé.pdf',
      ],
    );
    assert.equal(m.files.get('attachments/résumé.pdf')!.toString(), '%PDF-1.4\n');
    assert.equal(
      m.files.get('attachments/attachment-2.eml')!.toString(),
      'From: inner@x.test\r\nSubject: forwarded\r\n\r\ninner body',
      'message/rfc822 kept whole',
    );
    assert.equal(m.files.get('attachments/attachment-3.txt')!.toString(), 'a second text part');
    assert.equal(one(m, 'mime-content-ids'), 'attachment-1.png=logo@a.test');
  });
  it('names an unnamed application/octet-stream part attachment-N.bin (the type table says "*", no file name)', async () => {
    const m = await stable(
      mime(
        ['From: a@a.test', 'Content-Type: multipart/mixed; boundary=B'],
        '--B\r\nContent-Type: text/plain\r\n\r\nsee patch\r\n--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--B--\r\n',
      ),
    );
    assert.deepEqual([...m.files.keys()], ['body', 'attachments/attachment-1.bin']);
  });
  it('ima-to-mime puts the content-id back, so cid: links in the HTML still find their image', async () => {
    const back = (await toMime(await toIma(message))).toString();
    assert.match(back, /Content-ID: <logo@a\.test>/i);
    assert.match(back, /multipart\/related/);
    assert.match(back, /cid:logo@a\.test/);
  });
  it('decodes an unknown charset as UTF-8 with replacement and keeps the original part as an attachment', async () => {
    const m = await stable(mime(['From: a@a.test', 'Content-Type: text/plain; charset=x-martian-9'], 'caf\xe9 ok\r\n'.replace(/\xe9/, '\u00e9')));
    assert.equal(m.files.get('body')!.toString(), 'café ok\n');
    assert.ok(m.files.has('attachments/attachment-1.txt'), 'the original is kept too');
  });
  it('reads text that says UTF-8 but is not as windows-1252, keeping the original', async () => {
    const raw = Buffer.concat([Buffer.from('From: a@a.test\r\nContent-Type: text/plain; charset=utf-8\r\n\r\ncaf'), Buffer.from([0xe9]), Buffer.from('\r\n')]);
    const m = await stable(raw);
    assert.equal(m.files.get('body')!.toString(), 'café\n');
    assert.deepEqual(m.files.get('attachments/attachment-1.txt'), Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x0d, 0x0a]));
  });
  it('reads a large (spooled) text that says UTF-8 but is not as windows-1252 too, keeping the original byte for byte', async () => {
    const line = `${'y'.repeat(70)}\r\n`;
    const text = Buffer.concat([Buffer.from(line.repeat(45_000)), Buffer.from('caf'), Buffer.from([0xe9]), Buffer.from('\r\n')]);
    const m = await readIma(await toIma(Buffer.concat([Buffer.from('From: a@a.test\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n'), text])));
    const body = m.files.get('body')!.toString();
    assert.equal(body.length, 45_000 * 71 + 5);
    assert.ok(body.endsWith('y\ncafé\n'));
    assert.ok(m.files.get('attachments/attachment-1.txt')!.equals(text), 'the original is kept, byte for byte');
  });
  it('decodes format=flowed text', async () => {
    const m = await stable(mime(['From: a@a.test', 'Content-Type: text/plain; charset=utf-8; format=flowed'], 'one long \r\nline\r\n'));
    assert.equal(m.files.get('body')!.toString(), 'one long line\n');
  });
});

async function failsWith(message: Buffer | string, pattern: RegExp, limits = MIME_LIMITS) {
  const started = Date.now();
  await assert.rejects(readMime(Readable.from([Buffer.from(message)]), { limits }), (e: unknown) => {
    assert.ok(e instanceof Failure, String(e));
    assert.equal(e.exitCode, 65);
    assert.match(e.message, pattern);
    assert.doesNotMatch(e.message, /\n/);
    return true;
  });
  assert.ok(Date.now() - started < 20_000, 'no hang');
}

function nested(depth: number): string {
  let open = '';
  let close = '';
  for (let i = 0; i < depth; i++) {
    open += `Content-Type: multipart/mixed; boundary="b${i}"\r\n\r\n--b${i}\r\n`;
    close = `\r\n--b${i}--\r\n` + close;
  }
  return `From: a@a.test\r\n${open}Content-Type: text/plain\r\n\r\ndeep${close}`;
}

function manyParts(n: number): string {
  const parts = Array.from({ length: n }, (_, i) => `--B\r\nContent-Type: application/octet-stream; name=p${i}.bin\r\n\r\n${i}\r\n`);
  return `From: a@a.test\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n${parts.join('')}--B--\r\n`;
}

describe('mime-to-ima on hostile input (one line, exit 65, or the best message it can)', () => {
  it('200 KB of headers: fails naming max_header_bytes', () =>
    failsWith(`From: a@a.test\r\nX-Big: ${'x'.repeat(200 * 1024)}\r\n\r\nbody\r\n`, /max_header_bytes/));
  it('10,000 parts: fails naming max_parts', () => failsWith(manyParts(10_000), /max_parts/));
  it('10,000 parts with max_parts raised: converts every one', async () => {
    const ima = await toIma(manyParts(10_000), { limits: { ...MIME_LIMITS, maxParts: 20_000 } });
    const m = await readIma(ima, { ...DEFAULT_LIMITS, maxEntries: 20_000 });
    assert.equal(m.files.size, 10_000);
    assert.equal(m.files.get('attachments/p9999.bin')!.toString(), '9999');
  });
  it('50-deep nesting: fails naming max_depth', () => failsWith(nested(50), /max_depth/));
  it('10-deep nesting converts', async () => assert.equal((await stable(nested(10))).files.get('body')!.toString(), 'deep\n'));
  it('a message over max_message_bytes fails naming the limit', () =>
    failsWith(mime(['From: a@a.test'], 'x'.repeat(4096)), /max_message_bytes/, { ...MIME_LIMITS, maxMessageBytes: 1024 }));
  it('missing closing boundary, truncated part: converts what is there', async () => {
    const m = await stable('From: a@a.test\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhalf a messa');
    assert.equal(m.files.get('body')!.toString(), 'half a messa\n');
  });
  it('bad base64: decodes what it can', async () => {
    const m = await stable(
      mime(['From: a@a.test', 'Content-Type: application/octet-stream; name=x.bin', 'Content-Transfer-Encoding: base64'], 'QUJD**!!RE\r\nV=GH\r\n'),
    );
    assert.ok(m.files.has('attachments/x.bin'));
  });
  it('no header section at all: converts to a message with the text as body', async () => {
    const m = await stable('just some text\r\nanother line\r\n');
    assert.match(one(m, 'message-id')!, /^urn:uuid:/);
    assert.equal(m.files.get('body')?.toString(), 'just some text\nanother line\n');
  });
  it('a header section run into the text without an empty line: the first line that is not a header starts the body (as in Postfix)', async () => {
    const m = await stable('From: a@a.test\r\nSubject: no gap\r\n folded\r\nthe text: starts here\r\nmore\r\n');
    assert.equal(one(m, 'subject'), 'no gap folded');
    assert.equal(m.files.get('body')?.toString(), 'the text: starts here\nmore\n');
  });
  it('empty input is no message', () => failsWith('', /^the input is empty/));
  it('binary garbage: converts, or fails with one line', async () => {
    for (const size of [100, 4096, 64 * 1024]) {
      const garbage = Buffer.alloc(size);
      for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 7919) & 0xff;
      try {
        await stable(garbage);
      } catch (e) {
        assert.ok(e instanceof Failure && e.exitCode === 65 && !e.message.includes('\n'), String(e));
      }
    }
  });
});
