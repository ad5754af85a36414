// Real peers read what ima-to-mime writes: Python's email package (an
// independent MIME parser) must see the same text, attachments and headers
// as the IMA message holds; mblaze's mlist and mshow list and show the
// Maildir that ima-to-mime --maildir fills.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import { parseAddress, parseAddressList } from '../../src/address.js';
import { Headers, bufferPart, writeMessage } from '../../src/message/index.js';
import { ROOT, runBin, runCommand, tempDir } from '../helpers.js';
import { corpusFiles } from './corpus.test.js';
import { type ReadIma, one, readIma, toIma, toMime } from './helpers.js';

interface PythonView {
  subject: string | null;
  from: string[];
  to: string[];
  message_id: string | null;
  date: string | null;
  body: string | null;
  html: string | null;
  files: Record<string, string>;
  defects: string[];
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const ascii = (a: ReturnType<typeof parseAddress>) => `${a.local}@${a.asciiDomain}`;

describe("Python's email package reads what ima-to-mime writes", () => {
  it('the same subject, addresses, ids, date, text, HTML and attachment bytes for every corpus message', async () => {
    const dir = tempDir();
    const files = corpusFiles();
    const imas: ReadIma[] = [];
    const paths: string[] = [];
    for (const [i, file] of files.entries()) {
      const ima = await toIma(readFileSync(file));
      const path = join(dir, `${i}.eml`);
      writeFileSync(path, await toMime(ima));
      imas.push(await readIma(ima));
      paths.push(path);
    }
    const r = await runCommand('python3', [join(ROOT, 'test/mime/read_mime.py')], { input: paths.join('\n') + '\n' });
    assert.equal(r.code, 0, r.stderr);
    const views = r.stdout
      .toString()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as PythonView);
    assert.equal(views.length, files.length);
    for (const [i, py] of views.entries()) {
      const m = imas[i];
      const where = files[i];
      assert.deepEqual(py.defects, [], `${where}: Python finds no defect in our MIME`);
      const subject = one(m, 'subject');
      if (subject !== undefined) assert.equal(py.subject, subject, where);
      const from = one(m, 'from');
      // Python decodes an encoded-word even inside an addr-spec, where RFC 2047 forbids one: skip those.
      if (from !== undefined && !m.headers['mime-from'] && !from.includes('=?')) assert.deepEqual(py.from, [ascii(parseAddress(from))], where);
      const to = one(m, 'to');
      if (to !== undefined && !m.headers['mime-to'] && !to.includes('=?')) assert.deepEqual(py.to, parseAddressList(to).map(ascii), where);
      // ima-to-mime writes an id without a kept original in the domain of the IMA from (ima-mime(7)).
      const idDomain = from === undefined ? 'localhost' : parseAddress(from).asciiDomain;
      assert.equal(py.message_id, one(m, 'mime-message-id') ?? `<${one(m, 'message-id')!.slice('urn:uuid:'.length)}@${idDomain}>`, where);
      if (one(m, 'date')) assert.equal(Date.parse(py.date!), Date.parse(one(m, 'date')!), where);
      // A message with no text at all goes with an empty text part (a MIME message has a body): the same to a reader.
      assert.equal(py.body ?? '', m.files.get('body')?.toString() ?? '', `${where}: text`);
      assert.equal(py.html, m.files.get('body.html')?.toString() ?? null, `${where}: HTML`);
      const attachments: Record<string, string> = {};
      for (const [k, v] of m.files) {
        if (!k.startsWith('attachments/')) continue;
        // A message/rfc822 part that could go as such is parsed by Python: compare its subject.
        const asMessage = py.files[k.slice(12)]?.startsWith('message: ');
        attachments[k.slice(12)] = asMessage ? `message: ${one(await readIma(await toIma(v)), 'subject') ?? ''}` : sha256(v);
      }
      assert.deepEqual(py.files, attachments, `${where}: attachments`);
    }
  });
});

/** Python's view of each MIME file. */
async function pythonReads(paths: string[]): Promise<PythonView[]> {
  const r = await runCommand('python3', [join(ROOT, 'test/mime/read_mime.py')], { input: paths.join('\n') + '\n' });
  assert.equal(r.code, 0, r.stderr);
  return r.stdout
    .toString()
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as PythonView);
}

/** An IMA message of one text body and these extra header fields. */
async function imaWith(fields: [string, string][], body: string): Promise<Buffer> {
  const h = new Headers().add('from', 'alice@a.test').add('to', 'bob@b.test').add('subject', 'Invoice');
  for (const [name, value] of fields) h.add(name, value);
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  await writeMessage(out, { headers: h, body: bufferPart(Buffer.from(body)) });
  return Buffer.concat(chunks);
}

describe("Python's email package reads a sender's MIME fields as nothing", () => {
  it('a Content-Type or MIME-Version in the headers entry (as mime-header or a plain field) does not turn the text into attachments', async () => {
    // The body text is a whole multipart structure: a Content-Type naming its boundary, written before
    // the composer's, would make readers show invoice.exe as an attachment of a message that has none.
    const evil = 'multipart/mixed; boundary=EVIL';
    const body =
      'Please pay.\n--EVIL\nContent-Type: application/octet-stream; name=invoice.exe\nContent-Disposition: attachment; filename=invoice.exe\n\nMZ\n--EVIL--\n';
    const headers: [string, string][][] = [
      [['mime-header', `Content-Type: ${evil}`]],
      [['content-type', evil]],
      [
        ['mime-header', 'MIME-Version: 1.0'],
        ['mime-header', `CONTENT-TYPE : ${evil}`],
        ['content-transfer-encoding', 'base64'],
      ],
    ];
    const dir = tempDir();
    const paths: string[] = [];
    const heads: string[] = [];
    for (const [i, fields] of headers.entries()) {
      writeFileSync(join(dir, `${i}.ima`), await imaWith(fields, body));
      const r = await runBin('ima-to-mime', [join(dir, `${i}.ima`)]);
      assert.equal(r.code, 0, r.stderr);
      heads.push(r.stdout.toString().split('\n\n')[0]);
      writeFileSync(join(dir, `${i}.eml`), r.stdout);
      paths.push(join(dir, `${i}.eml`));
    }
    for (const [i, py] of (await pythonReads(paths)).entries()) {
      assert.deepEqual(py.files, {}, `message ${i}: no attachments`);
      assert.equal(py.body, body, `message ${i}: the text as written`);
    }
    for (const head of heads) {
      assert.equal(head.match(/^content-type:/gim)?.length, 1, head);
      assert.equal(head.match(/^mime-version:/gim)?.length, 1, head);
    }
  });
});

describe('mblaze reads the Maildir ima-to-mime writes', () => {
  it('mlist lists every message once, mshow shows its text and attachments, and a second run adds nothing', async () => {
    const dir = tempDir();
    const inputs: string[] = [];
    // 25 messages of distinct ids: fixtures copied from one template share a Message-ID, and a Maildir stores an id once.
    const ids = new Set<string>();
    for (const file of corpusFiles()) {
      if (inputs.length === 25) break;
      const ima = await toIma(readFileSync(file));
      const id = one(await readIma(ima), 'message-id')!;
      if (ids.has(id)) continue;
      ids.add(id);
      const path = join(dir, `${inputs.length}.ima`);
      writeFileSync(path, ima);
      inputs.push(path);
    }
    const maildir = join(dir, 'Maildir');
    const first = await runBin('ima-to-mime', ['--maildir', maildir, ...inputs]);
    assert.equal(first.code, 0, first.stderr);
    const listed = await runCommand('mlist', [maildir]);
    assert.equal(listed.code, 0, listed.stderr);
    const messages = listed.stdout.toString().trim().split('\n');
    assert.equal(messages.length, 25);
    const again = await runBin('ima-to-mime', ['--maildir', maildir, ...inputs]);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(readdirSync(join(maildir, 'new')).length, 25, 'nothing stored twice');

    const ima = await readIma(readFileSync(inputs[0]));
    const file = messages.find((p) => p.endsWith(one(ima, 'message-id')!.slice('urn:uuid:'.length)))!;
    const shown = await runCommand('mshow', [file]);
    assert.equal(shown.code, 0, shown.stderr);
    if (one(ima, 'subject')) assert.ok(shown.stdout.toString().includes(`Subject: ${one(ima, 'subject')!.slice(0, 30)}`), shown.stdout.toString());
    const text = ima.files.get('body')?.toString().trim().split('\n')[0];
    if (text) assert.ok(shown.stdout.toString().includes(text), 'mshow shows the text');
  });
});
