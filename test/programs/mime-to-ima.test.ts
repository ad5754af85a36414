import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { BIN, runBin, runCommand, runMain, tempDir, testEnv } from '../helpers.js';
import { one, readIma } from '../mime/helpers.js';

const MESSAGE =
  'From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: Hi\r\nDate: Mon, 23 Nov 2026 10:00:00 +0100\r\nMessage-ID: <hi@a.test>\r\n\r\nHello Bob\r\n';

describe('mime-to-ima', () => {
  it('converts stdin to an IMA message on stdout that tar reads', async () => {
    const dir = tempDir();
    const r = await runBin('mime-to-ima', [], { input: MESSAGE });
    assert.equal(r.code, 0, r.stderr);
    writeFileSync(join(dir, 'm.ima'), r.stdout);
    const headers = await runCommand('tar', ['xOf', join(dir, 'm.ima'), 'headers']);
    assert.match(
      headers.stdout.toString(),
      /^from: Alice <alice@a\.test>\nto: bob@b\.test\nsubject: Hi\ndate: 2026-11-23T10:00:00\+01:00\nmessage-id: urn:uuid:/,
    );
    assert.equal((await runCommand('tar', ['xOf', join(dir, 'm.ima'), 'body'])).stdout.toString(), 'Hello Bob\n');
  });
  it('reads a FILE and writes --output atomically; the same message twice gives the same bytes', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'm.eml'), MESSAGE);
    const r = await runMain('mime-to-ima', ['-o', 'out.ima', 'm.eml'], { cwd: dir });
    assert.equal(r.code, 0, r.stderr);
    const again = await runMain('mime-to-ima', ['m.eml'], { cwd: dir });
    assert.deepEqual(again.stdout, readFileSync(join(dir, 'out.ima')));
    assert.equal(one(await readIma(again.stdout), 'mime-message-id'), '<hi@a.test>');
  });
  it('a large base64 attachment: a FILE to --output, a FILE to stdout and stdin to stdout give the same bytes, the attachment intact', async () => {
    // Several MB: the input, decoded and spooled chunks are lent from pools and reused (a FILE, written to a file or stdout).
    const dir = tempDir();
    const data = Buffer.alloc(5 * 1024 * 1024 + 11);
    for (let i = 0; i + 4 <= data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
    const b64 = data.toString('base64').replace(/.{76}/g, '$&\r\n');
    const eml =
      'From: a@a.test\r\nSubject: big\r\nMessage-ID: <big@a.test>\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n' +
      `--B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--B\r\nContent-Type: application/octet-stream; name=big.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n${b64}\r\n--B--\r\n`;
    writeFileSync(join(dir, 'big.eml'), eml);
    const toFile = await runBin('mime-to-ima', ['-o', join(dir, 'out.ima'), join(dir, 'big.eml')]);
    assert.equal(toFile.code, 0, toFile.stderr);
    const toStdout = await runBin('mime-to-ima', [join(dir, 'big.eml')]);
    assert.equal(toStdout.code, 0, toStdout.stderr);
    const fromStdin = await runMain('mime-to-ima', [], { input: eml });
    assert.equal(fromStdin.code, 0, fromStdin.stderr);
    assert.ok(readFileSync(join(dir, 'out.ima')).equals(fromStdin.stdout));
    assert.ok(toStdout.stdout.equals(fromStdin.stdout));
    const attachment = await runCommand('tar', ['xOf', join(dir, 'out.ima'), 'attachments/big.bin']);
    assert.ok(attachment.stdout.equals(data));
  });
  it('a message over a configured limit: one line naming the key, exit 65, nothing on stdout', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'mime-to-ima.toml'), 'max_parts = 2\n');
    const parts = [1, 2, 3].map((i) => `--B\r\nContent-Type: text/plain\r\n\r\n${i}\r\n`).join('');
    const r = await runBin('mime-to-ima', [], {
      input: `From: a@a.test\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n${parts}--B--\r\n`,
      env: testEnv({ IMA_CONFIG_DIR: dir }),
    });
    assert.equal(r.code, 65);
    assert.equal(r.stdout.length, 0);
    assert.match(r.stderr, /^mime-to-ima: more than 2 MIME parts \(max_parts\)\n$/);
    // The same from a FILE (read into pooled buffers): the same one line, nothing else.
    writeFileSync(join(dir, 'parts.eml'), `From: a@a.test\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n${parts}--B--\r\n`);
    const fromFile = await runBin('mime-to-ima', [join(dir, 'parts.eml')], { env: testEnv({ IMA_CONFIG_DIR: dir }) });
    assert.equal(fromFile.code, 65);
    assert.equal(fromFile.stdout.length, 0);
    assert.match(fromFile.stderr, /^mime-to-ima: more than 2 MIME parts \(max_parts\)\n$/);
  });
  it('attachments sharing a name at the 255-byte limit: each gets its own name within 255 bytes and its own content, and the run ends', async () => {
    // The "-N" that makes a name unique must not be cut off again to fit: that
    // looped forever at 100% CPU (the reason for timeout(1) here).
    const ascii = `${'x'.repeat(251)}.pdf`;
    const accented = `${'é'.repeat(125)}.pdf`; // 254 bytes: "-2" fits only without one é, never half of one
    const attached = [ascii, ascii, ascii, accented, accented];
    const parts = attached.map(
      (name, i) => `--B\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename*=utf-8''${encodeURIComponent(name)}\r\n\r\npart ${i}\r\n`,
    );
    const eml = `From: a@a.test\r\nSubject: same names\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n${parts.join('')}--B--\r\n`;
    const r = await runCommand('timeout', ['30', join(BIN, 'mime-to-ima')], { input: eml, env: testEnv() });
    assert.equal(r.code, 0, `exit ${r.code} (124: still running after 30 s) ${r.stderr}`);
    const { files } = await readIma(r.stdout);
    const names = [ascii, `${'x'.repeat(249)}-2.pdf`, `${'x'.repeat(249)}-3.pdf`, accented, `${'é'.repeat(124)}-2.pdf`];
    for (const name of names) assert.ok(Buffer.byteLength(name) <= 255, name);
    // Each name holds its own part, in the order the parts came.
    assert.deepEqual(
      new Map([...files].filter(([path]) => path.startsWith('attachments/')).map(([path, data]) => [path, data.toString()])),
      new Map(names.map((name, i) => [`attachments/${name}`, `part ${i}`])),
    );
  });
  it('text with no header section is the body; empty input is no message: one line, exit 65, nothing on stdout', async () => {
    const dir = tempDir();
    const r = await runBin('mime-to-ima', [], { input: 'just a body line\r\nanother\r\n' });
    assert.equal(r.code, 0, r.stderr);
    writeFileSync(join(dir, 'm.ima'), r.stdout);
    assert.equal((await runCommand('tar', ['xOf', join(dir, 'm.ima'), 'body'])).stdout.toString(), 'just a body line\nanother\n');
    const empty = await runBin('mime-to-ima', [], { input: '' });
    assert.equal(empty.code, 65);
    assert.equal(empty.stdout.length, 0);
    assert.match(empty.stderr, /^mime-to-ima: the input is empty: no message\n$/);
  });
  it('a missing FILE or a directory exits 66; a bad config names the key and exits 78; --check-config prints the effective config', async () => {
    assert.equal((await runBin('mime-to-ima', ['/nonexistent/m.eml'])).code, 66);
    const dir = tempDir();
    const isDir = await runBin('mime-to-ima', [dir]);
    assert.equal(isDir.code, 66, isDir.stderr);
    assert.equal(isDir.stderr, `mime-to-ima: ${dir}: is a directory\n`);
    assert.equal(isDir.stdout.length, 0);
    writeFileSync(join(dir, 'c.toml'), 'max_depth = "deep"\n');
    const bad = await runMain('mime-to-ima', ['--config', join(dir, 'c.toml')]);
    assert.equal(bad.code, 78);
    assert.match(bad.stderr, /max_depth/);
    const ok = await runMain('mime-to-ima', ['--check-config']);
    assert.equal(ok.code, 0);
    assert.match(ok.stdout.toString(), /max_parts = 1000/);
  });
});
