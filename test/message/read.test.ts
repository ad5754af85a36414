import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { DEFAULT_LIMITS, type MessageLimits, plainHeaders, readMessage, writeMessage } from '../../src/message/index.js';
import { parseHeaders } from '../../src/message/headers.js';
import { chunksOf } from '../../src/streams.js';
import { PassThrough } from 'node:stream';
import { END, HEADERS, entry, header, pad, pax, tarOf } from '../tarbuild.js';

async function read(tar: Buffer, limits: Partial<MessageLimits> = {}) {
  const out: Record<string, string> = {};
  for await (const e of readMessage(Readable.from([tar]), { ...DEFAULT_LIMITS, ...limits })) {
    if (e.kind === 'headers') out.headers = e.raw.toString();
    else {
      const parts: Buffer[] = [];
      for await (const c of e.stream) parts.push(c as Buffer);
      out[e.path] = Buffer.concat(parts).toString();
    }
  }
  return out;
}

/** What a read gives: the entries' contents (and whether each came in hand), or the error's words. */
async function outcome(chunks: Buffer[], limits: Partial<MessageLimits> = {}): Promise<Record<string, string> | string> {
  try {
    const out: Record<string, string> = {};
    for await (const e of readMessage(Readable.from(chunks, { objectMode: false }), { ...DEFAULT_LIMITS, ...limits })) {
      if (e.kind === 'headers') out.headers = e.raw.toString();
      else {
        const parts: Buffer[] = [];
        for await (const c of e.stream) parts.push(c as Buffer);
        out[e.path] = Buffer.concat(parts).toString('latin1');
      }
    }
    return out;
  } catch (e) {
    return (e as Error).message;
  }
}

const pieces = (b: Buffer, n: number) => Array.from({ length: Math.ceil(b.length / n) }, (_, i) => b.subarray(i * n, (i + 1) * n));

async function rejects(tar: Buffer, pattern: RegExp, limits: Partial<MessageLimits> = {}) {
  await assert.rejects(read(tar, limits), (e: Error) => {
    assert.match(e.message, pattern);
    assert.doesNotMatch(e.message, /\n/, 'one line');
    return true;
  });
}

describe('readMessage accepts', () => {
  it('a hand-made message with body and attachments', async () => {
    const got = await read(tarOf(entry('headers', HEADERS), entry('body', 'hi\n'), entry('attachments/a.bin', 'AAA')));
    assert.equal(got.headers, HEADERS);
    assert.equal(got.body, 'hi\n');
    assert.equal(got['attachments/a.bin'], 'AAA');
  });
  it('the attachments/ directory entry GNU tar adds, once', async () => {
    const got = await read(tarOf(entry('headers', HEADERS), header({ name: 'attachments/', type: '5' }), entry('attachments/x', 'X')));
    assert.equal(got['attachments/x'], 'X');
  });
  it('a pax path record carrying a UTF-8 name', async () => {
    const got = await read(tarOf(entry('headers', HEADERS), pax({ path: 'attachments/naïve résumé.txt' }), entry('PaxHeader', 'R')));
    assert.equal(got['attachments/naïve résumé.txt'], 'R');
  });
  it('entries the caller does not read (they are drained)', async () => {
    let n = 0;
    for await (const e of readMessage(
      Readable.from([tarOf(entry('headers', HEADERS), entry('attachments/a', 'x'.repeat(10000)), entry('attachments/b', 'y'))]),
    )) {
      n++;
      void e;
    }
    assert.equal(n, 3);
  });
  it('zero padding after the end-of-archive blocks (a tar record of 10240 bytes, as GNU tar writes)', async () => {
    const tar = tarOf(entry('headers', HEADERS), entry('body', 'hi\n'));
    const got = await read(Buffer.concat([tar, Buffer.alloc(10240 - tar.length)]));
    assert.equal(got.body, 'hi\n');
  });
  it('the end-of-archive blocks split across reads, byte by byte', async () => {
    const tar = tarOf(entry('headers', HEADERS), entry('body', 'hi\n'));
    const out: string[] = [];
    for await (const e of readMessage(Readable.from([...tar].map((b) => Buffer.from([b]))))) out.push(e.path);
    assert.deepEqual(out, ['headers', 'body']);
  });
});

describe('readMessage of a message in one chunk', () => {
  const tar = tarOf(entry('headers', HEADERS), entry('body', 'hi\n'), entry('attachments/a.bin', Buffer.from([0, 1, 0xff])));
  it("hands each entry's data over as it is (no tar parser, no stream unless asked)", async () => {
    const kinds: [string, boolean][] = [];
    for await (const e of readMessage(Readable.from([tar], { objectMode: false }))) kinds.push([e.path, e.kind !== 'headers' && e.data !== undefined]);
    assert.deepEqual(kinds, [
      ['headers', false],
      ['body', true],
      ['attachments/a.bin', true],
    ]);
  });
  it('gives what a read in many chunks gives, padding after the end included', async () => {
    for (const t of [tar, Buffer.concat([tar, Buffer.alloc(10240 - tar.length)])]) {
      const whole = await outcome([t]);
      assert.equal(typeof whole, 'object');
      assert.deepEqual(whole, await outcome(pieces(t, 100)));
      assert.deepEqual(await outcome([t, Buffer.alloc(512)]), whole, 'more padding in a chunk of its own');
    }
    assert.match(String(await outcome([tar, Buffer.from('x')])), /data after the end-of-archive blocks/);
  });
  it('reads an input that was paused before it came', async () => {
    const input = new PassThrough();
    input.pause();
    input.end(tar);
    const paths: string[] = [];
    for await (const e of readMessage(input)) paths.push(e.path);
    assert.deepEqual(paths, ['headers', 'body', 'attachments/a.bin']);
  });
  it('stops reading its input when the caller leaves after the headers', async () => {
    const input = Readable.from([tar, Buffer.alloc(512)], { objectMode: false });
    for await (const e of readMessage(input)) if (e.kind === 'headers') break;
    assert.equal(input.destroyed, true);
  });
});

describe('readMessage of a message in many chunks (read as it streams)', () => {
  const H = entry('headers', HEADERS);
  const big = Buffer.alloc(4 * 1024 * 1024, 'abcdefgh\n');
  /** A message with a 4 MiB body, made 16 KiB at a time as it is read; `made` says how much so far. */
  function bigInput(failAfter?: number) {
    const tar = tarOf(H, entry('body', big), entry('attachments/a.bin', Buffer.from([1, 2, 3])));
    const counter = { made: 0 };
    const input = new Readable({
      read() {
        if (failAfter !== undefined && counter.made >= failAfter) return void this.destroy(Object.assign(new Error('disk went away'), { code: 'EIO' }));
        const chunk = tar.subarray(counter.made, counter.made + 16384);
        counter.made += chunk.length;
        this.push(chunk.length ? chunk : null);
      },
    });
    return { input, counter, tar };
  }

  it('hands over to tar-stream at the first header that is not plain, with the same entries as a read in one chunk', async () => {
    const tar = tarOf(H, entry('body', 'hi\n'), pax({ path: 'attachments/caf\u00e9' }), entry('x', 'pax-named'), entry('attachments/b', 'plain after'));
    const whole = await outcome([tar]);
    assert.deepEqual(whole, { headers: HEADERS, body: 'hi\n', 'attachments/caf\u00e9': 'pax-named', 'attachments/b': 'plain after' });
    for (const n of [100, 512, 700, 1536]) assert.deepEqual(await outcome(pieces(tar, n)), whole, `pieces of ${n}`);
  });

  it('accepts and rejects what a read in one chunk does, with the same entries, for damaged messages in any chunking', async () => {
    const bases = [
      tarOf(H, entry('body', 'hello\n'.repeat(300)), entry('attachments/a', Buffer.alloc(3000, 1))),
      tarOf(H, entry('body', 'x'), pax({ path: 'attachments/\u00e9' }), entry('y', 'z'), entry('attachments/b', 'q')),
      tarOf(H, entry('attachments/' + 'n'.repeat(95), 'long')),
    ];
    const damage = fc.oneof(
      fc.record({ cut: fc.nat() }),
      fc.record({ at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
      fc.record({ zeros: fc.nat({ max: 2000 }) }),
    );
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...bases), damage, fc.integer({ min: 1, max: 3000 }), async (base, d, n) => {
        let tar = Buffer.from(base);
        if ('cut' in d) tar = tar.subarray(0, d.cut % tar.length);
        else if ('at' in d) tar[d.at % tar.length] = d.byte;
        else tar = Buffer.concat([tar, Buffer.alloc(d.zeros)]);
        const [whole, split] = [await outcome([tar]), await outcome(pieces(tar, n))];
        // Either both give the same entries, or both refuse (their words may differ: which check sees the damage first depends on the chunks).
        if (typeof whole === 'object' || typeof split === 'object') assert.deepEqual(split, whole);
      }),
      { numRuns: 400 },
    );
  });

  it('reads no further ahead than the caller takes (backpressure)', async () => {
    const { input, counter } = bigInput();
    let taken = 0;
    let most = 0;
    for await (const e of readMessage(input)) {
      if (e.kind !== 'body') continue;
      for await (const c of chunksOf(e.stream)) {
        taken += c.length;
        most = Math.max(most, counter.made - taken);
        await new Promise((r) => setImmediate(r)); // a slow reader: the input would run ahead now if nothing held it back
      }
    }
    assert.equal(taken, big.length);
    assert.ok(most < 256 * 1024, `read ahead of the caller by at most a few chunks, not ${most} bytes`);
  });

  it('an entry stream the caller destroyed is abandoned: the read fails, and the input is destroyed', async () => {
    const { input } = bigInput();
    await assert.rejects(
      (async () => {
        for await (const e of readMessage(input)) if (e.kind === 'body') e.stream.destroy();
      })(),
      /body: entry stream was abandoned/,
    );
    assert.equal(input.destroyed, true);
  });

  it("an input that fails in the middle of an entry fails the entry's stream and the read with its own error", async () => {
    const { input } = bigInput(1024 * 1024);
    let streamError: unknown;
    await assert.rejects(
      (async () => {
        for await (const e of readMessage(input)) {
          if (e.kind !== 'body') continue;
          try {
            for await (const _ of chunksOf(e.stream));
          } catch (err) {
            streamError = err;
          }
        }
      })(),
      (e: NodeJS.ErrnoException) => e.code === 'EIO' && /disk went away/.test(e.message),
    );
    assert.equal((streamError as NodeJS.ErrnoException)?.code, 'EIO');
  });
});

describe('readMessage rejects the end of the archive', () => {
  const H = entry('headers', HEADERS);
  const B = entry('body', 'hello\n');
  it('a message cut off exactly at an entry boundary (no end-of-archive blocks)', () => rejects(Buffer.concat([H, B]), /truncated archive.*end-of-archive/));
  it('a message with one zero block of the two', () => rejects(Buffer.concat([H, B, Buffer.alloc(512)]), /truncated archive.*end-of-archive/));
  it('a zero block followed by an entry', () => rejects(Buffer.concat([H, Buffer.alloc(512), tarOf(B)]), /zero block not followed by another/));
  it('an entry after the end-of-archive blocks (what tar tvf does not list)', () =>
    rejects(Buffer.concat([tarOf(H, B), tarOf(entry('attachments/hidden.exe', 'MZ'))]), /data after the end-of-archive blocks/));
  it('a single non-zero byte far into the padding', () => {
    const tail = Buffer.alloc(8192);
    tail[8000] = 1;
    return rejects(Buffer.concat([tarOf(H, B), tail]), /data after the end-of-archive blocks/);
  });
  it('padding after the end beyond the limit', () =>
    rejects(Buffer.concat([tarOf(H, B), Buffer.alloc(1024 * 1024 + 1)]), /more than 1048576 bytes of padding/));
});

describe('readMessage rejects', () => {
  const H = entry('headers', HEADERS);
  const cases: [string, Buffer, RegExp, Partial<MessageLimits>?][] = [
    ['a symlink', tarOf(H, Buffer.concat([header({ name: 'attachments/l', type: '2', linkname: '/etc/passwd' })])), /link entries are not allowed/],
    ['a hard link', tarOf(H, header({ name: 'attachments/l', type: '1', linkname: 'headers' })), /link entries are not allowed/],
    ['a character device', tarOf(H, header({ name: 'attachments/d', type: '3' })), /device and FIFO/],
    ['a FIFO', tarOf(H, header({ name: 'attachments/f', type: '6' })), /device and FIFO/],
    ['a GNU long link', tarOf(H, entry('././@LongLink', 'x', 'K')), /link entries/],
    ['a pax global header', tarOf(H, entry('pax_global_header', '', 'g')), /entry type "g" is not allowed/],
    ['an absolute name', tarOf(H, entry('/etc/passwd', 'x')), /absolute name/],
    ['a ".." name', tarOf(H, entry('attachments/../../x', 'x')), /"\/"|\.\./],
    ['"..." as ../ at the top', tarOf(H, entry('../x', 'x')), /"\.\." in name/],
    ['a name outside the list', tarOf(H, entry('notes.txt', 'x')), /not a message part/],
    ['"./headers"', tarOf(entry('./headers', HEADERS)), /not a message part/],
    ['a "/" inside an attachment name', tarOf(H, entry('attachments/a/b', 'x')), /contains "\/"/],
    ['an empty attachment name', tarOf(H, entry('attachments/', 'x')), /empty name/],
    ['a control character in an attachment name', tarOf(H, entry('attachments/a\x01b', 'x')), /control character/],
    ['a NUL in a pax name', tarOf(H, pax({ path: 'attachments/a\0b' }), entry('x', 'x')), /NUL|control/],
    ['duplicate names', tarOf(H, entry('attachments/a', '1'), entry('attachments/a', '2')), /appears twice/],
    [
      'NFC and NFD spellings of one name',
      tarOf(H, pax({ path: 'attachments/caf\u00e9' }), entry('x', '1'), pax({ path: 'attachments/cafe\u0301' }), entry('y', '2')),
      /appears twice/,
    ],
    ['a missing headers entry', tarOf(entry('body', 'x')), /first entry must be "headers"/],
    ['headers not first', tarOf(entry('body', 'x'), H), /first entry must be "headers"/],
    ['two headers entries', tarOf(H, H), /appears twice/],
    ['an empty archive', END, /no "headers" entry/],
    ['a truncated archive', tarOf(H, entry('body', 'hello')).subarray(0, 1300), /truncated/],
    ['headers over the limit', tarOf(H), /headers of \d+ bytes exceed the limit of 10/, { maxHeaderBytes: 10 }],
    ['too many entries', tarOf(H, entry('attachments/a'), entry('attachments/b')), /more than 2 entries/, { maxEntries: 2 }],
    ['a message over the size limit', tarOf(H, entry('body', 'x'.repeat(2000))), /larger than the limit of 1000 bytes/, { maxTotalBytes: 1000 }],
    [
      'a pax header over the limit',
      tarOf(H, pax({ comment: 'x'.repeat(5000) }), entry('attachments/a')),
      /extended header of \d+ bytes exceeds the limit/,
      { maxMetaBytes: 4096 },
    ],
    [
      'a GNU long name over the limit',
      tarOf(H, entry('././@LongLink', 'attachments/' + 'x'.repeat(5000), 'L'), entry('x')),
      /extended header/,
      { maxMetaBytes: 4096 },
    ],
    ['a pax size that lies about the data', tarOf(H, pax({ size: '99999' }), entry('attachments/a', 'short')), /truncated|inconsistent/],
    [
      'a malformed pax record',
      tarOf(H, Buffer.concat([header({ name: 'PaxHeader', size: 10, type: 'x' }), pad(Buffer.from('zz path=x\n'))]), entry('attachments/a')),
      /malformed pax record/,
    ],
    ['a body that is not UTF-8', tarOf(H, entry('body', Buffer.from([0x68, 0xff, 0x0a]))), /body: not valid UTF-8/],
    ['a directory other than attachments/', tarOf(H, header({ name: 'attachments/sub/', type: '5' })), /directories are not allowed/],
    [
      'a corrupt header checksum',
      tarOf(
        H,
        (() => {
          const b = header({ name: 'body', size: 0 });
          b[0] = 0x63;
          return b;
        })(),
      ),
      /tar: /,
    ],
  ];
  for (const [what, tar, pattern, limits] of cases) it(what, () => rejects(tar, pattern, limits));
  it('with the same words whether the message comes in one chunk (read whole) or in many (through tar-stream)', async () => {
    for (const [what, tar, , limits] of cases) assert.deepEqual(await outcome([tar], limits), await outcome(pieces(tar, 100), limits), what);
  });
});

describe('headers entry rules', () => {
  const bad: [string, string, RegExp][] = [
    ['CR line ends', 'from: a@a.test\r\n', /CR in line/],
    ['folding', 'from: a@a.test\nsubject: x\n  continued\n', /folded header line/],
    ['an uppercase name', 'From: a@a.test\n', /bad header name "From"/],
    ['a missing LF at the end', 'from: a@a.test', /no LF/],
    ['a field given twice', 'from: a@a.test\nfrom: b@a.test\n', /"from" given twice/],
    ['a bad date', 'from: a@a.test\ndate: yesterday\n', /not an RFC 3339 date-time/],
    ['a bad message-id', 'from: a@a.test\nmessage-id: <x@y>\n', /not a urn:uuid: URN/],
    ['a bad address', 'from: a@a.test\nto: b@\n', /header "to"/],
    ['invalid UTF-8', Buffer.from([0x73, 0x3a, 0x20, 0xff, 0x0a]).toString('latin1'), /bad header name|not valid UTF-8/],
    ['a line without ": "', 'from: a@a.test\nnonsense\n', /not "name: value"/],
    ['a byte order mark before the first name (kept, not dropped)', '\uFEFFfrom: a@a.test\n', /line 1: bad header name "\\u\{feff\}from"/],
    ['an empty line', 'from: a@a.test\n\nto: b@b.test\n', /empty line/],
  ];
  for (const [what, text, pattern] of bad) {
    it(`rejects ${what}`, () => rejects(tarOf(entry('headers', Buffer.from(text, what === 'invalid UTF-8' ? 'latin1' : 'utf8'))), pattern));
  }
});

describe('plainHeaders (the headers of a head without a tar parser)', () => {
  it('reads what the canonical writer writes, as readMessage does', async () => {
    const out = new PassThrough();
    const chunks: Buffer[] = [];
    out.on('data', (c: Buffer) => chunks.push(c));
    await writeMessage(out, { headers: parseHeaders(Buffer.from(HEADERS)), body: { size: 3, open: () => Buffer.from('hi\n') } });
    const tar = Buffer.concat(chunks);
    assert.equal(plainHeaders(tar)?.serialize().toString(), (await read(tar)).headers);
    assert.equal(
      plainHeaders(tarOf(entry('headers', HEADERS)))
        ?.serialize()
        .toString(),
      HEADERS,
    );
  });
  it('leaves every other layout to readMessage (undefined)', () => {
    const plain = tarOf(entry('headers', HEADERS));
    const badSum = Buffer.from(plain);
    badSum[0x60] = 1; // inside the name field, after its NUL: only the checksum tells
    const cases: [string, Buffer][] = [
      ['a pax header first', tarOf(pax({ path: 'headers' }), entry('PaxHeader', HEADERS))],
      ['a bad checksum', badSum],
      ['the entry cut off', plain.subarray(0, 600)],
      ['another first entry', tarOf(entry('body', 'hi\n'))],
      ['a headers entry over the limit', plain],
      ['less than a block', plain.subarray(0, 100)],
    ];
    for (const [what, tar] of cases)
      assert.equal(plainHeaders(tar, what.includes('limit') ? { ...DEFAULT_LIMITS, maxHeaderBytes: 10 } : DEFAULT_LIMITS), undefined, what);
  });
  it("refuses bad headers with readMessage's words", async () => {
    const tar = tarOf(entry('headers', 'From: a@a.test\n'));
    assert.throws(() => plainHeaders(tar), /bad header name "From"/);
    await rejects(tar, /bad header name "From"/);
  });
});
