// The runner (src/run.ts) as a process: a message on stdin is read whole
// whatever stdin is: a shell's pipe, a file, Node's socket pair, or a
// descriptor its parent left non-blocking and fills slowly. And a program
// that answers before the end of stdin ends then, though the writer keeps
// stdin open.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { BIN, runBin, runCommand, runHoldingStdin, tempDir, testEnv } from './helpers.js';

const dir = tempDir();
// Random and larger than one read, so that bytes lost, repeated or reordered between reads show.
const random = randomBytes(1200 * 1024 + 123);
writeFileSync(join(dir, 'random.bin'), random);

function mailbox(name: string): string {
  const box = join(dir, name);
  for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(box, f), { recursive: true });
  return box;
}

/** The attachment as give-recipient stored it in box (one message). */
function storedAttachment(box: string): Buffer {
  const [id] = readdirSync(join(box, 'new'));
  return readFileSync(join(box, 'new', id, 'attachments', 'random.bin'));
}

const python = spawnSync('python3', ['-c', 'import os; os.set_blocking']).status === 0;

describe('run: a message on stdin', () => {
  const message = join(dir, 'message.ima');
  it('is read whole from a shell pipe, a file and a socket pair', async () => {
    const made = await runBin('make-message', ['-r', 'alice@a.test', '--text', 'Hi\n', '-a', 'random.bin', 'bob@b.test'], { cwd: dir });
    assert.equal(made.code, 0, made.stderr);
    writeFileSync(message, made.stdout);
    const gr = join(BIN, 'give-recipient');
    const ways: [string, () => Promise<{ code: number | null; stderr: string }>][] = [
      ['pipe', () => runCommand('sh', ['-c', 'cat "$1" | "$2" "$3"', 'sh', message, gr, mailbox('pipe')], { env: testEnv() })],
      ['file', () => runCommand('sh', ['-c', '"$2" "$3" < "$1"', 'sh', message, gr, mailbox('file')], { env: testEnv() })],
      ['socketpair', () => runBin('give-recipient', [mailbox('socketpair')], { input: made.stdout })],
    ];
    for (const [way, run] of ways) {
      const r = await run();
      assert.equal(r.code, 0, `${way}: ${r.stderr}`);
      assert.ok(storedAttachment(join(dir, way)).equals(random), `${way}: the attachment stored is the one sent`);
    }
  });

  it('is read whole from a descriptor its parent left non-blocking, written slowly', { skip: !python && 'python3 not here' }, async () => {
    const box = mailbox('nonblocking');
    // The read end is made non-blocking: read(2) finds it empty (EAGAIN) between the writer's pieces.
    const script = [
      'import os, subprocess, sys, time',
      'r, w = os.pipe()',
      'os.set_blocking(r, False)',
      'p = subprocess.Popen(sys.argv[2:], stdin=r)',
      'os.close(r)',
      'data = open(sys.argv[1], "rb").read()',
      'for i in range(0, len(data), 300000):',
      '    view = memoryview(data)[i:i + 300000]',
      '    while view:',
      '        view = view[os.write(w, view):]',
      '    time.sleep(0.05)',
      'os.close(w)',
      'sys.exit(p.wait())',
    ].join('\n');
    const r = await runCommand('python3', ['-c', script, message, join(BIN, 'give-recipient'), box], { env: testEnv() });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(storedAttachment(box).equals(random));
  });

  it('ends the program once it has answered, though the writer keeps stdin open', async () => {
    // Not a message: refused at once, while more is still to come on stdin.
    const refusing: [string, string[]][] = [
      ['give-recipient', [mailbox('refusing')]],
      ['handle-incoming-mail', ['--config', join(dir, 'none.toml')]],
    ];
    writeFileSync(join(dir, 'none.toml'), '[domains."b.test"]\ncommand = ["true"]\n');
    for (const [name, args] of refusing) {
      const r = await runHoldingStdin(name, args, Buffer.alloc(2048, 'A'));
      assert.equal(r.code, 1, `${name} exited by itself with FAIL's code, not killed at the deadline`);
      assert.match(r.stdout, /^FAIL /);
    }
  });
});
