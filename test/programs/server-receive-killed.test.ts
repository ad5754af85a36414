// server-receive killed in the middle of DATA: its spawned handler sees its
// input end, exactly between two entries, and must not store what it got.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, readdirSync, watch, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import { test } from 'node:test';
import { basicFields, config, connect, dir, headersOf, message, startServer } from '../imdp-fixture.js';
import { entryOffsets } from '../tarbuild.js';

/**
 * A handler that passes its input on to give-recipient and writes MARK.got
 * once it holds whole entries up to `entries` (an entry boundary), then
 * MARK.done with give-recipient's exit code.
 */
const TEE = join(dir, 'tee-handler.mjs');
writeFileSync(
  TEE,
  `import { spawn } from 'node:child_process';
import { renameSync, writeFileSync } from 'node:fs';
const [mark, entries, ...cmd] = process.argv.slice(2);
const child = spawn(cmd[0], cmd.slice(1), { stdio: ['pipe', 'ignore', 'ignore'] });
child.stdin.on('error', () => {});
const parts = [];
let got = false;
function wholeEntries(buf) {
  let off = 0, n = 0;
  while (off + 512 <= buf.length && buf.subarray(off, off + 512).some((b) => b !== 0)) {
    const size = parseInt(buf.subarray(off + 124, off + 136).toString('latin1').replace(/\\0.*$/s, '').trim() || '0', 8);
    const next = off + 512 + Math.ceil(size / 512) * 512;
    if (next > buf.length) break;
    off = next;
    n++;
  }
  return n;
}
process.stdin.on('data', (c) => {
  parts.push(c);
  child.stdin.write(c);
  if (!got && wholeEntries(Buffer.concat(parts)) >= Number(entries)) {
    got = true;
    writeFileSync(mark + '.got', '');
  }
});
process.stdin.on('end', () => child.stdin.end());
child.on('exit', (code) => {
  // Written aside, then renamed: the test sees the name only with its content.
  writeFileSync(mark + '.done.tmp', String(code));
  renameSync(mark + '.done.tmp', mark + '.done');
  process.exit(0);
});
`,
);

/** Resolves when path exists (a watch on its directory, and a look first). */
function appears(path: string, ms: number): Promise<void> {
  return new Promise((res, rej) => {
    const w = watch(join(path, '..'), () => {
      if (!existsSync(path)) return;
      clearTimeout(t);
      w.close();
      res();
    });
    const t = setTimeout(() => {
      w.close();
      rej(new Error(`${path} did not appear within ${ms} ms`));
    }, ms);
    if (existsSync(path)) {
      clearTimeout(t);
      w.close();
      res();
    }
  });
}

test('server-receive killed while DATA stands at an entry boundary: its spawned handler stores nothing', async () => {
  const box = join(dir, 'killed-box');
  for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(box, f), { recursive: true });
  const mark = join(dir, 'killed');
  const handler = ['node', TEE, mark, '2', 'give-recipient', box];
  const s = await startServer(config({ handler }).replace('[tls]', 'in_process = false\n[tls]'));
  try {
    const tar = await message(basicFields(), 'Hello Bob.\n');
    const [, , end] = entryOffsets(tar);
    assert.ok(end < tar.length, 'headers and body, then the end blocks');
    const c = await connect(s.port);
    c.sendMail(headersOf(tar), tar.length);
    const a = await c.readAnswer();
    assert.equal(a.word, 'ACCEPT', JSON.stringify(a));
    // DATA with headers and body, whole, and no end-of-archive blocks: as a sender killed between entries leaves it.
    c.socket.write(Buffer.concat([Buffer.from('DATA\n'), tar.subarray(0, end)]));
    await appears(`${mark}.got`, 20_000);
    s.proc.kill('SIGKILL');
    await once(s.proc, 'exit');
    await appears(`${mark}.done`, 20_000);
    c.socket.destroy();
    assert.equal(readFileSync(`${mark}.done`, 'utf8'), '1', 'give-recipient refused the message (FAIL)');
    assert.deepEqual(readdirSync(join(box, 'new')), []);
    assert.deepEqual(readdirSync(join(box, 'tmp')), []);
  } finally {
    await s.stop();
  }
});
