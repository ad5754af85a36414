// A stage's standard streams as a process (src/stdio.ts): what it writes
// reaches its reader whole, however slowly the reader reads and whether the
// parent left the pipe blocking or not; what it logs reaches a pipe on
// stderr; a closed reader of its result line is not its failure.
// (stdin of every kind: run.test.ts.)
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { BIN, runBin, runCommand, tempDir, testEnv } from './helpers.js';

const dir = tempDir();
const python = spawnSync('python3', ['-c', 'import os; os.set_blocking']).status === 0;

// The parent reads the program's stdout from a pipe in pieces, slowly, so the
// program finds it full; with 'nonblocking', write(2) then fails with EAGAIN.
const slowReader = (blocking: boolean) =>
  [
    'import os, subprocess, sys, time',
    'r, w = os.pipe()',
    `os.set_blocking(w, ${blocking ? 'True' : 'False'})`,
    'p = subprocess.Popen(sys.argv[2:], stdout=w)',
    'os.close(w)',
    'out = open(sys.argv[1], "wb")',
    'while True:',
    '    piece = os.read(r, 200000)',
    '    if not piece:',
    '        break',
    '    out.write(piece)',
    '    time.sleep(0.02)',
    'sys.exit(p.wait())',
  ].join('\n');

describe('stdio: a stage writing to a pipe', () => {
  let mime: string;
  let expected: Buffer;

  it('is made: a MIME message larger than a pipe holds, and its IMA form written to a file', async () => {
    writeFileSync(join(dir, 'random.bin'), randomBytes(900 * 1024));
    const made = await runBin('make-message', ['-r', 'alice@a.test', '--text', 'Hi\n', '-a', 'random.bin', 'bob@b.test'], { cwd: dir });
    assert.equal(made.code, 0, made.stderr);
    const asMime = await runBin('ima-to-mime', [], { input: made.stdout });
    assert.equal(asMime.code, 0, asMime.stderr);
    mime = join(dir, 'message.eml');
    writeFileSync(mime, asMime.stdout);
    const toFile = await runCommand('sh', ['-c', '"$1" "$2" > "$3"', 'sh', join(BIN, 'mime-to-ima'), mime, join(dir, 'to-file.ima')], { env: testEnv() });
    assert.equal(toFile.code, 0, toFile.stderr);
    expected = readFileSync(join(dir, 'to-file.ima'));
    assert.ok(expected.length > 900 * 1024);
  });

  for (const blocking of [true, false]) {
    const kind = blocking ? 'blocking' : 'left non-blocking by the parent';
    it(`reaches a slow reader whole through a pipe ${kind}`, { skip: !python && 'python3 not here' }, async () => {
      const out = join(dir, `slow-${blocking}.ima`);
      const r = await runCommand('python3', ['-c', slowReader(blocking), out, join(BIN, 'mime-to-ima'), mime], { env: testEnv() });
      assert.equal(r.code, 0, r.stderr);
      assert.ok(readFileSync(out).equals(expected), 'the same bytes as written to a file');
    });
  }

  it(
    'stores the message and exits 0 when its stdout has no reader left: EPIPE on the result line is not a failure',
    { skip: !python && 'python3 not here' },
    async () => {
      // A pipe whose read end is closed before the program starts: its result line meets EPIPE, every time.
      const box = join(dir, 'no-reader');
      for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(box, f), { recursive: true });
      const script = [
        'import os, subprocess, sys',
        'r, w = os.pipe()',
        'os.close(r)',
        'p = subprocess.run(sys.argv[2:], stdin=open(sys.argv[1], "rb"), stdout=w, stderr=subprocess.PIPE)',
        'sys.stderr.buffer.write(p.stderr)',
        'sys.exit(p.returncode)',
      ].join('\n');
      const r = await runCommand('python3', ['-c', script, join(dir, 'to-file.ima'), join(BIN, 'give-recipient'), box], { env: testEnv() });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stderr, '');
      assert.equal(readdirSync(join(box, 'new')).length, 1, 'the message is stored');
    },
  );

  it('logs to a pipe on stderr', async () => {
    // A socket pair here (Node's), as a server's stage has.
    const r = await runBin('mime-to-ima', ['--verbose', join(dir, 'no-such.eml')]);
    assert.equal(r.code, 66, r.stderr);
    assert.match(r.stderr, /^mime-to-ima: .*no-such\.eml.*no such file/m);
  });
});
