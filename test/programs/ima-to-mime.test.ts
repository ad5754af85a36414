import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { runBin, runCommand, runMain, tempDir } from '../helpers.js';
import { readIma, toIma } from '../mime/helpers.js';

const MESSAGE = 'From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nBcc: carol@c.test\r\nSubject: Hi\r\nMessage-ID: <hi@a.test>\r\n\r\nHello Bob\r\n';

async function madeMessage(dir: string): Promise<string[]> {
  // A native message, from make-message, with an attachment.
  writeFileSync(join(dir, 'report.pdf'), '%PDF-1.4\n');
  const r = await runMain('make-message', [
    '-r',
    'alice@a.test',
    '-s',
    'Report',
    '-a',
    join(dir, 'report.pdf'),
    '--text',
    'See attached.\n',
    '-o',
    join(dir, 'native.ima'),
    'bob@b.test',
  ]);
  assert.equal(r.code, 0, r.stderr);
  writeFileSync(join(dir, 'legacy.ima'), await toIma(MESSAGE));
  return [join(dir, 'native.ima'), join(dir, 'legacy.ima')];
}

describe('ima-to-mime', () => {
  it('writes MIME on stdout with LF line ends, and CRLF with --crlf; the legacy ids come back', async () => {
    const dir = tempDir();
    const [, legacy] = await madeMessage(dir);
    const lf = await runBin('ima-to-mime', [legacy]);
    assert.equal(lf.code, 0, lf.stderr);
    const text = lf.stdout.toString();
    assert.doesNotMatch(text, /\r/);
    assert.match(text, /^Message-ID: <hi@a\.test>$/m);
    assert.match(text, /^Bcc: carol@c\.test$/m);
    const crlf = await runBin('ima-to-mime', ['--crlf', '--no-bcc', legacy]);
    assert.match(crlf.stdout.toString(), /^Subject: Hi\r$/m);
    assert.doesNotMatch(crlf.stdout.toString(), /^Bcc:/m);
  });
  it('--no-bcc hides every Bcc: a second Bcc header and a Resent-Bcc (kept as raw lines) too', async () => {
    const dir = tempDir();
    const file = join(dir, 'two-bcc.ima');
    writeFileSync(
      file,
      await toIma(
        'From: alice@a.test\r\nTo: bob@b.test\r\nBcc: carol@c.test\r\nBcc: dave@d.test\r\nResent-Bcc: erin@e.test\r\nSubject: Hi\r\nMessage-ID: <bcc2@a.test>\r\n\r\nHello\r\n',
      ),
    );
    const kept = await runBin('ima-to-mime', [file]);
    assert.equal(kept.code, 0, kept.stderr);
    for (const who of ['carol@c.test', 'dave@d.test', 'erin@e.test']) assert.match(kept.stdout.toString(), new RegExp(`^(Resent-)?Bcc: ${who}$`, 'im'));
    const hidden = await runBin('ima-to-mime', ['--no-bcc', file]);
    assert.equal(hidden.code, 0, hidden.stderr);
    assert.doesNotMatch(hidden.stdout.toString(), /carol|dave|erin/);
    assert.match(hidden.stdout.toString(), /^To: bob@b\.test$/m);
  });
  it('gives a native message a Message-ID of its UUID at the sender domain, and reads a stored message directory', async () => {
    const dir = tempDir();
    const [native] = await madeMessage(dir);
    const mailbox = join(dir, 'mbox');
    for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(mailbox, f), { recursive: true });
    const stored = await runMain('give-recipient', [mailbox, native]);
    assert.equal(stored.code, 0, stored.stderr);
    const [id] = readdirSync(join(mailbox, 'new'));
    const r = await runMain('ima-to-mime', [join(mailbox, 'new', id)]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout.toString(), new RegExp(`^Message-ID: <${id}@a\\.test>$`, 'm'));
    assert.match(r.stdout.toString(), /filename=report\.pdf/);
    const back = await readIma(await toIma(r.stdout));
    assert.equal(back.headers['message-id'][0], `urn:uuid:${id}`, 'and the way back gives the same IMA id');
  });
  it('--maildir stores each message once; a second run adds nothing', async () => {
    const dir = tempDir();
    const inputs = await madeMessage(dir);
    const md = join(dir, 'Maildir');
    assert.equal((await runBin('ima-to-mime', ['--maildir', md, ...inputs])).code, 0);
    assert.equal((await runBin('ima-to-mime', ['--maildir', md, ...inputs])).code, 0);
    assert.equal(readdirSync(join(md, 'new')).length, 2);
  });
  it('a bad message among good ones: the good ones are stored, one line names the bad one, exit 65', async () => {
    const dir = tempDir();
    const inputs = await madeMessage(dir);
    writeFileSync(join(dir, 'bad.ima'), 'not a tar archive at all, just some text that is long enough to fill a block'.repeat(10));
    const md = join(dir, 'Maildir');
    const r = await runBin('ima-to-mime', ['--maildir', md, inputs[0], join(dir, 'bad.ima'), inputs[1]]);
    assert.equal(r.code, 65, r.stderr);
    assert.equal(r.stderr.trim().split('\n').length, 1);
    assert.match(r.stderr, /bad\.ima/);
    assert.equal(readdirSync(join(md, 'new')).length, 2);
  });
  it('a message directory holding a link or a FIFO is a bad message: with --maildir it is named and skipped, the others stored, exit 65', async () => {
    const dir = tempDir();
    const [native] = await madeMessage(dir);
    /** A message directory (headers and body) for the test to spoil. */
    const messageDir = (name: string) => {
      const at = join(dir, name);
      mkdirSync(join(at, 'attachments'), { recursive: true });
      writeFileSync(join(at, 'headers'), `from: alice@a.test\nsubject: ${name}\n`);
      writeFileSync(join(at, 'body'), 'Hello\n');
      return at;
    };
    writeFileSync(join(dir, 'secret'), 'not for the reader\n');
    symlinkSync(join(dir, 'secret'), join(messageDir('linked-file'), 'attachments', 'x.pdf'));
    assert.equal((await runCommand('mkfifo', [join(messageDir('fifo'), 'body.html')])).code, 0);
    const linkedDir = messageDir('linked-dir');
    mkdirSync(join(dir, 'elsewhere'));
    writeFileSync(join(dir, 'elsewhere', 'y.pdf'), 'elsewhere\n');
    rmSync(join(linkedDir, 'attachments'), { recursive: true });
    symlinkSync(join(dir, 'elsewhere'), join(linkedDir, 'attachments'));
    const bad = ['linked-file', 'fifo', 'linked-dir'];

    const md = join(dir, 'Maildir');
    const r = await runBin('ima-to-mime', ['--maildir', md, ...bad.map((b) => join(dir, b)), native]);
    assert.equal(r.code, 65, r.stderr);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 3, r.stderr);
    for (const [i, b] of bad.entries()) assert.match(lines[i], new RegExp(`${b}/(attachments|body\\.html)`));
    assert.equal(readdirSync(join(md, 'new')).length, 1, 'the good one is stored');
    // One bad message alone, to stdout: the same exit code, nothing written.
    const alone = await runBin('ima-to-mime', [join(dir, 'linked-file')]);
    assert.equal(alone.code, 65, alone.stderr);
    assert.equal(alone.stdout.length, 0);
  });
  it('a large attachment: MIME -> IMA -> MIME (a FILE to stdout, pooled buffers) -> IMA gives the same IMA message', async () => {
    const dir = tempDir();
    const data = Buffer.alloc(5 * 1024 * 1024 + 5);
    for (let i = 0; i + 4 <= data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
    const eml =
      'From: a@a.test\r\nSubject: big\r\nMessage-ID: <big@a.test>\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n' +
      `--B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--B\r\nContent-Type: application/octet-stream; name=big.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n` +
      `${data.toString('base64').replace(/.{76}/g, '$&\r\n')}\r\n--B--\r\n`;
    const ima = await runMain('mime-to-ima', [], { input: eml });
    assert.equal(ima.code, 0, ima.stderr);
    writeFileSync(join(dir, 'big.ima'), ima.stdout);
    const back = await runBin('ima-to-mime', [join(dir, 'big.ima')]);
    assert.equal(back.code, 0, back.stderr);
    const again = await runMain('mime-to-ima', [], { input: back.stdout });
    assert.equal(again.code, 0, again.stderr);
    assert.ok(again.stdout.equals(ima.stdout));
  });
  it('more than one MESSAGE without --maildir is a usage error (64)', async () => {
    assert.equal((await runBin('ima-to-mime', ['a.ima', 'b.ima'])).code, 64);
  });
});
