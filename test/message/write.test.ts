import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import tar from 'tar-stream';
import {
  Headers,
  bufferPart,
  canonicalEntries,
  mtimeOf,
  parseHeaders,
  readMessage,
  tarLength,
  writeEntries,
  writeMessage,
  type MessageParts,
} from '../../src/message/index.js';
import { runCommand, tempDir } from '../helpers.js';

const headers = () =>
  new Headers()
    .add('from', 'Alice <alice@a.test>')
    .add('to', 'bob@b.test')
    .add('subject', 'Grüße')
    .add('date', '2026-03-04T05:06:07Z')
    .add('message-id', 'urn:uuid:0b6f7c8e-1d2a-4b3c-8d4e-5f6a7b8c9d0e');

async function bytesOf(parts: MessageParts): Promise<Buffer> {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  await writeMessage(out, parts);
  return Buffer.concat(chunks);
}

async function readBack(tar: Buffer) {
  const got: Record<string, Buffer> = {};
  for await (const e of readMessage(Readable.from([tar]))) {
    if (e.kind === 'headers') got.headers = e.raw;
    else {
      const parts: Buffer[] = [];
      for await (const c of e.stream) parts.push(c as Buffer);
      got[e.path] = Buffer.concat(parts);
    }
  }
  return got;
}

const binary = Buffer.from(Array.from({ length: 3000 }, (_, i) => (i * 7) & 0xff));

describe('writeMessage', () => {
  it('round-trips headers, body, body.html and attachment bytes', async () => {
    const tar = await bytesOf({
      headers: headers(),
      body: bufferPart(Buffer.from('Hello\n')),
      bodyHtml: bufferPart(Buffer.from('<p>Hello</p>')),
      attachments: [
        { name: 'b.bin', ...bufferPart(binary) },
        { name: 'a é.txt', ...bufferPart(Buffer.from('x')) },
      ],
    });
    const got = await readBack(tar);
    assert.equal(got.headers.toString(), headers().serialize().toString());
    assert.equal(got.body.toString(), 'Hello\n');
    assert.equal(got['body.html'].toString(), '<p>Hello</p>');
    assert.deepEqual(got['attachments/b.bin'], binary);
    assert.deepEqual(Object.keys(got), ['headers', 'body', 'body.html', 'attachments/a é.txt', 'attachments/b.bin']);
  });

  it('is canonical: the same content gives the same bytes, whatever the attachment order', async () => {
    const a = await bytesOf({
      headers: headers(),
      attachments: [
        { name: 'x', ...bufferPart(Buffer.from('1')) },
        { name: 'y', ...bufferPart(Buffer.from('2')) },
      ],
    });
    const b = await bytesOf({
      headers: headers(),
      attachments: [
        { name: 'y', ...bufferPart(Buffer.from('2')) },
        { name: 'x', ...bufferPart(Buffer.from('1')) },
      ],
    });
    assert.equal(createHash('sha256').update(a).digest('hex'), createHash('sha256').update(b).digest('hex'));
  });

  it('refuses an attachment whose stream is longer than announced', async () => {
    await assert.rejects(
      bytesOf({ headers: headers(), attachments: [{ name: 'x', size: 2, open: () => Readable.from([Buffer.from('abc')]) }] }),
      /more than the 2 bytes announced/,
    );
  });

  it('refuses a bad attachment name before writing', async () => {
    await assert.rejects(bytesOf({ headers: headers(), attachments: [{ name: '../x', ...bufferPart(Buffer.from('1')) }] }), /contains "\/"/);
  });

  it('writes what GNU tar lists and extracts', async () => {
    const dir = tempDir();
    const file = join(dir, 'm.ima');
    writeFileSync(
      file,
      await bytesOf({
        headers: headers(),
        body: bufferPart(Buffer.from('hi\n')),
        attachments: [{ name: 'résumé ' + 'long '.repeat(30) + '.pdf', ...bufferPart(binary) }],
      }),
    );
    const list = await runCommand('tar', ['tvf', file]);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout.toString(), /headers\n.*body\n.*attachments\/résumé long/);
    const hdr = await runCommand('tar', ['xOf', file, 'headers']);
    assert.equal(hdr.stdout.toString(), headers().serialize().toString());
    mkdirSync(join(dir, 'x'));
    const x = await runCommand('tar', ['xf', file, '-C', join(dir, 'x')]);
    assert.equal(x.code, 0, x.stderr);
  });

  it('reads back what GNU tar writes, in its default and pax formats', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'headers'), headers().serialize());
    writeFileSync(join(dir, 'body'), 'text\n');
    mkdirSync(join(dir, 'attachments'));
    const long = 'ü'.repeat(40) + '-' + 'n'.repeat(60) + '.bin';
    writeFileSync(join(dir, 'attachments', long), binary);
    for (const format of ['gnu', 'pax']) {
      const file = join(dir, `${format}.ima`);
      const r = await runCommand('tar', [`--format=${format}`, '-cf', file, '-C', dir, 'headers', 'body', 'attachments']);
      assert.equal(r.code, 0, r.stderr);
      const { createReadStream } = await import('node:fs');
      const got: Record<string, Buffer> = {};
      for await (const e of readMessage(createReadStream(file))) {
        if (e.kind === 'headers') continue;
        const parts: Buffer[] = [];
        for await (const c of e.stream) parts.push(c as Buffer);
        got[e.path] = Buffer.concat(parts);
      }
      assert.equal(got.body.toString(), 'text\n', format);
      assert.deepEqual(got[`attachments/${long}`], binary, format);
    }
  });
});

/** The canonical message as tar-stream's pack writes it, with the fields the writer always sets: what writeMessage wrote before it wrote its own tar. */
async function packedByTarStream(parts: MessageParts): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => chunks.push(c as Buffer));
  const ended = new Promise<void>((res) => pack.on('end', () => res()));
  const mtime = mtimeOf(parts.headers);
  for (const e of canonicalEntries(parts)) {
    const data = e.open() as Buffer;
    await new Promise<void>((res, rej) =>
      pack.entry({ name: e.path, size: e.size, mode: 0o644, mtime, type: 'file', uid: 0, gid: 0, uname: '', gname: '' }, data, (err) =>
        err ? rej(err) : res(),
      ),
    );
  }
  pack.finalize();
  await ended;
  return Buffer.concat(chunks);
}

describe('the tar writeMessage writes', () => {
  const name = fc
    .string({ unit: fc.constantFrom(...'abcXYZ019-_.~ éü€✓漢'.split('')), minLength: 1, maxLength: 160 })
    .filter((n) => n.trim() === n && !/^\.+$/.test(n));
  const data = fc.uint8Array({ maxLength: 1500 }).map((a) => Buffer.from(a));
  it('is byte for byte what tar-stream wrote: ustar, a prefix for long names, pax for the rest, any size', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.option(fc.string({ maxLength: 1200 })),
        fc.uniqueArray(fc.tuple(name, data), { maxLength: 4, selector: ([n]) => n.normalize('NFC') }),
        async (body, atts) => {
          const parts: MessageParts = {
            headers: headers(),
            body: body === null ? undefined : bufferPart(Buffer.from(body)),
            attachments: atts.map(([n, d]) => ({ name: n, ...bufferPart(d) })),
          };
          const bytes = await bytesOf(parts);
          assert.deepEqual(bytes, await packedByTarStream(parts));
          assert.equal(tarLength(canonicalEntries(parts), mtimeOf(parts.headers)), bytes.length, 'tarLength says the length without writing');
        },
      ),
      { numRuns: 150 },
    );
  });
  it('names of every length around the ustar limits: 100 bytes, a 155-byte prefix, and over', async () => {
    for (const n of [88, 89, 90, 100, 101, 150, 155, 160, 250]) {
      const parts: MessageParts = { headers: headers(), attachments: [{ name: 'x'.repeat(n), ...bufferPart(Buffer.from('y')) }] };
      const bytes = await bytesOf(parts);
      assert.deepEqual(bytes, await packedByTarStream(parts), `a name of ${n} bytes`);
      assert.equal(tarLength(canonicalEntries(parts), mtimeOf(parts.headers)), bytes.length, `tarLength, a name of ${n} bytes`);
    }
  });
});

describe('writeEntries and its destination', () => {
  /** A 1 MiB body made 16 KiB at a time as it is read; `read` says how much of it was taken. */
  function body() {
    const counter = { read: 0 };
    const size = 1024 * 1024;
    const stream = new Readable({
      read() {
        const n = Math.min(16384, size - counter.read);
        counter.read += n;
        this.push(n ? Buffer.alloc(n, 'b') : null);
      },
    });
    return {
      counter,
      entries: [
        { path: 'headers', ...bufferPart(headers().serialize()) },
        { path: 'body', size, open: () => stream },
      ],
    };
  }

  it('a destination that closes early gets nothing more, and the entries are still read to their end', async () => {
    const { counter, entries } = body();
    const out = new PassThrough({ highWaterMark: 16384 });
    let got = 0;
    out.on('data', (c: Buffer) => {
      got += c.length;
      if (got >= 64 * 1024) out.destroy(); // a reader that has what it wants
    });
    await writeEntries(out, entries, new Date(0));
    assert.equal(counter.read, 1024 * 1024, 'the body was read to its end');
    assert.ok(got < 200 * 1024, `nothing more after the close (${got} bytes arrived)`);
  });

  it("a destination that fails fails the write with the destination's own error", async () => {
    const { entries } = body();
    const out = new PassThrough({ highWaterMark: 16384 });
    out.once('data', () => out.destroy(Object.assign(new Error('peer went away'), { code: 'ECONNRESET' })));
    await assert.rejects(writeEntries(out, entries, new Date(0)), (e: NodeJS.ErrnoException) => e.code === 'ECONNRESET');
  });
});

describe('headers and addresses, property-based', () => {
  const label = fc.stringMatching(/^[a-z][a-z0-9]{0,10}$/);
  const local = fc.stringMatching(/^[a-z0-9][a-z0-9+_=]{0,15}$/);
  const value = fc
    .string({ unit: fc.constantFrom(...'abc xyzÄöü€✓-_.,;:!?'.split('')), minLength: 1, maxLength: 40 })
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  it('serialize then parse gives the same fields', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.stringMatching(/^x-[a-z0-9-]{1,10}$/), value), { maxLength: 10 }), local, label, (extra, l, d) => {
        const h = new Headers().add('from', `${l}@${d}.test`);
        for (const [n, v] of extra) h.add(n, v);
        assert.deepEqual(parseHeaders(h.serialize()).fields, h.fields);
      }),
    );
  });
});
