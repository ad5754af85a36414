import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { lutimesSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { BIN, runBin, runCommand, tempDir, testEnv } from '../helpers.js';
import { END, HEADERS, entry, entryOffsets, header, tarOf } from '../tarbuild.js';

const dir = tempDir();
const big = Buffer.alloc(300 * 1024, 7);
writeFileSync(join(dir, 'big.bin'), big);
// Random, so that bytes written out of order or twice cannot go unnoticed.
const random = randomBytes(1536 * 1024);
writeFileSync(join(dir, 'random.bin'), random);

async function makeMessage(args: string[]): Promise<Buffer> {
  const r = await runBin('make-message', ['-r', 'alice@a.test', '--text', 'Hello\n', ...args], { cwd: dir });
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

function mailbox(name: string): string {
  const box = join(dir, name);
  for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(box, f), { recursive: true });
  return box;
}

const stored = (box: string) => readdirSync(join(box, 'new'));

const strace = spawnSync('strace', ['-V']).status === 0;
/** give-recipient under strace (following its threads: fsync runs on the thread pool). */
const traced = (straceArgs: string[], args: string[], input: Buffer) =>
  runCommand('strace', ['-f', '-qq', ...straceArgs, join(BIN, 'give-recipient'), ...args], { input, env: testEnv() });

describe('give-recipient', () => {
  it('stores a message GNU tar wrote with a long attachment name (GNU and pax headers: read through tar-stream, loaded when needed)', async () => {
    const src = join(dir, 'gnutar');
    mkdirSync(join(src, 'attachments'), { recursive: true });
    const x = await runCommand('tar', ['-xf', '-', '-C', src], { input: await makeMessage(['bob@b.test']) });
    assert.equal(x.code, 0, x.stderr);
    const name = `${'n'.repeat(120)}.bin`;
    writeFileSync(join(src, 'attachments', name), random);
    for (const format of ['gnu', 'pax']) {
      const tar = await runCommand('tar', [`--format=${format}`, '-cf', '-', '-C', src, 'headers', 'body', `attachments/${name}`]);
      assert.equal(tar.code, 0, tar.stderr);
      const box = mailbox(`gnutar-${format}`);
      const r = await runBin('give-recipient', [box], { input: tar.stdout });
      assert.equal(r.code, 0, `${format}: ${r.stderr}`);
      const [id] = stored(box);
      assert.ok(readFileSync(join(box, 'new', id, 'attachments', name)).equals(random), `${format}: the attachment stored is the one sent`);
    }
  });

  it('stores headers, body and attachments as files and answers OK', async () => {
    const box = mailbox('store');
    const msg = await makeMessage(['-a', 'big.bin', 'bob@b.test']);
    const r = await runBin('give-recipient', ['--address', 'bob@b.test', box], { input: msg });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.toString(), 'OK bob@b.test\n');
    const [id] = stored(box);
    assert.match(id, /^[0-9a-f-]{36}$/);
    assert.match(readFileSync(join(box, 'new', id, 'headers'), 'utf8'), new RegExp(`message-id: urn:uuid:${id}`));
    assert.equal(readFileSync(join(box, 'new', id, 'body'), 'utf8'), 'Hello\n');
    assert.deepEqual(readFileSync(join(box, 'new', id, 'attachments', 'big.bin')), big);
    assert.deepEqual(readdirSync(join(box, 'tmp')), []);
  });

  it('stores a 1.5 MiB attachment of random bytes byte for byte (past its first 64 KiB, written in gathered writes)', async () => {
    const box = mailbox('random');
    const r = await runBin('give-recipient', [box], { input: await makeMessage(['-a', 'random.bin', 'bob@b.test']) });
    assert.equal(r.code, 0, r.stderr);
    const [id] = stored(box);
    assert.ok(readFileSync(join(box, 'new', id, 'attachments', 'random.bin')).equals(random), 'the attachment byte for byte');
    assert.deepEqual(readdirSync(join(box, 'tmp')), []);
  });

  it('fsyncs every file with data and every directory of the message before the rename into new/, and new/ after it (strace)', async (t) => {
    if (!strace) return t.skip('strace is not installed: the fsync order is not checked (apt-get install strace)');
    const box = mailbox('fsync');
    const msg = await makeMessage(['-a', 'big.bin', 'bob@b.test']);
    const trace = join(dir, 'fsync.trace');
    const r = await traced(['-o', trace, '-y', '-e', 'trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat'], [box], msg);
    assert.equal(r.code, 0, r.stderr);
    const [id] = stored(box);
    const lines = readFileSync(trace, 'utf8').split('\n');
    const at = lines.findIndex((l) => /rename\w*\(.*\/tmp\/[^"]+", .*\/new\//.test(l));
    assert.ok(at > 0, `a rename into new/ in:\n${lines.join('\n')}`);
    const synced = (part: string[]) =>
      part.flatMap((l) => /fs?d?a?t?a?sync\(\d+<([^>]+)>/.exec(l)?.[1] ?? []).map((p) => p.slice(box.length + 1).replace(/^tmp\/[^/]+/, 'MSG'));
    // The digest is a name (a link to headers): the fsync of MSG makes it durable.
    assert.deepEqual(synced(lines.slice(0, at)).sort(), ['MSG', 'MSG/attachments', 'MSG/attachments/big.bin', 'MSG/body', 'MSG/headers']);
    assert.match(readdirSync(join(box, 'new', id)).join(' '), /(^| )\.digest-sha256-[0-9a-f]{64}( |$)/);
    // The headers' fsync persists the link count the digest's link raised.
    const linked = lines.findIndex((l) => /link\w*\(.*\/headers".*\.digest-sha256-/.test(l));
    const headersSynced = lines.findIndex((l) => /sync\(\d+<[^>]+\/headers>/.test(l));
    assert.ok(linked >= 0 && linked < headersSynced, `the link to headers, then its fsync, in:\n${lines.join('\n')}`);
    assert.deepEqual(synced(lines.slice(at)), ['new']);
    assert.doesNotMatch(lines.join('\n'), /sync\(.*= -1/, 'every fsync succeeded');
    assert.ok(id);
  });

  it('stores the same message-id once and answers OK again', async () => {
    const box = mailbox('dup');
    const msg = await makeMessage(['bob@b.test']);
    for (let i = 0; i < 3; i++) {
      const r = await runBin('give-recipient', [box], { input: msg });
      assert.equal(r.code, 0, r.stderr);
    }
    assert.equal(stored(box).length, 1);
  });

  it('refuses a message cut off at an entry boundary (no end-of-archive blocks), and stores the whole retry', async () => {
    const box = mailbox('cut');
    const msg = await makeMessage(['-a', 'big.bin', 'bob@b.test']);
    const [, body, attachment, end] = entryOffsets(msg);
    assert.ok(body < attachment && attachment < end, 'headers, body, attachment');
    for (const at of [attachment, end]) {
      const r = await runBin('give-recipient', ['--address', 'bob@b.test', box], { input: msg.subarray(0, at) });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stdout.toString(), /^FAIL bob@b\.test 5\.6\.0 tar: truncated archive \(no end-of-archive blocks\)\n$/);
      assert.deepEqual(stored(box), []);
      assert.deepEqual(readdirSync(join(box, 'tmp')), []);
    }
    const whole = await runBin('give-recipient', ['--address', 'bob@b.test', box], { input: msg });
    assert.equal(whole.code, 0, whole.stderr);
    const [id] = stored(box);
    assert.deepEqual(readFileSync(join(box, 'new', id, 'attachments', 'big.bin')), big, 'the retry is stored whole');
  });

  it('refuses an entry hidden after the end-of-archive blocks, and anything but zeros there', async () => {
    const box = mailbox('hidden');
    const msg = await makeMessage(['bob@b.test']);
    for (const tail of [tarOf(entry('attachments/hidden.exe', 'MZ')), Buffer.from('x')]) {
      const r = await runBin('give-recipient', ['--address', 'bob@b.test', box], { input: Buffer.concat([msg, tail]) });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stdout.toString(), /^FAIL bob@b\.test 5\.6\.0 tar: data after the end-of-archive blocks\n$/);
      assert.deepEqual(stored(box), []);
    }
    const padded = await runBin('give-recipient', ['--address', 'bob@b.test', box], { input: Buffer.concat([msg, Buffer.alloc(20 * 512)]) });
    assert.equal(padded.code, 0, padded.stderr);
    assert.equal(stored(box).length, 1);
  });

  describe('dedupe by message-id and content', () => {
    const id = /message-id: urn:uuid:(\S+)/.exec(HEADERS)![1];
    const one = tarOf(entry('headers', HEADERS), entry('body', 'one\n'));
    const two = tarOf(entry('headers', HEADERS), entry('body', 'two\n'));
    const give = async (box: string, msg: Buffer) => {
      const r = await runBin('give-recipient', ['--address', 'bob@b.test', box], { input: msg });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.toString(), 'OK bob@b.test\n');
      return r;
    };
    const bodies = (box: string) =>
      stored(box)
        .map((n) => readFileSync(join(box, 'new', n, 'body'), 'utf8'))
        .sort();

    it('stores a different message that reuses a stored id as its own message, logs it, and dedupes its retry', async () => {
      const box = mailbox('reused-id');
      await give(box, one);
      const r = await give(box, two);
      assert.match(r.stderr, new RegExp(`message-id ${id} is already stored with other content: stored as [0-9a-f-]{36}`));
      assert.deepEqual(bodies(box), ['one\n', 'two\n'], 'never dropped as a duplicate');
      const other = stored(box).find((n) => n !== id)!;
      assert.match(readFileSync(join(box, 'new', other, 'headers'), 'utf8'), new RegExp(`message-id: urn:uuid:${id}`), 'the message itself is unchanged');
      await give(box, two);
      await give(box, one);
      assert.deepEqual(bodies(box), ['one\n', 'two\n'], 'a retry of either is a duplicate');
      const digests = readdirSync(join(box, 'new', id)).filter((n) => n.startsWith('.digest'));
      assert.equal(digests.length, 1);
      assert.match(digests[0], /^\.digest-sha256-[0-9a-f]{64}$/);
      // The digest is in the name, a second link to headers: no inode of its own.
      const [digestAt, headersAt] = [digests[0], 'headers'].map((n) => statSync(join(box, 'new', id, n)));
      assert.equal(digestAt.ino, headersAt.ino);
      assert.equal(headersAt.nlink, 2);
    });

    it('reads a digest name that is an empty file (as earlier versions stored it): its retry is a duplicate, other content is not', async () => {
      const box = mailbox('empty-digest');
      await give(box, one);
      const [name] = readdirSync(join(box, 'new', id)).filter((n) => n.startsWith('.digest-'));
      unlinkSync(join(box, 'new', id, name));
      writeFileSync(join(box, 'new', id, name), '');
      await give(box, one);
      assert.deepEqual(stored(box), [id], 'the retry is a duplicate');
      await give(box, two);
      assert.deepEqual(bodies(box), ['one\n', 'two\n']);
    });

    it('reads the digest of a message stored with a .digest file (before digests were names): its retry is a duplicate, other content is not', async () => {
      const box = mailbox('legacy-digest');
      await give(box, one);
      const [name] = readdirSync(join(box, 'new', id)).filter((n) => n.startsWith('.digest-'));
      // The name is a link to headers: writing through it would change them.
      unlinkSync(join(box, 'new', id, name));
      writeFileSync(join(box, 'new', id, '.digest'), `${name.slice('.digest-'.length).replace('-', ':')}\n`);
      await give(box, one);
      assert.deepEqual(stored(box), [id], 'the retry is a duplicate');
      await give(box, two);
      assert.deepEqual(bodies(box), ['one\n', 'two\n']);
    });

    it('takes a retry that differs only in received lines and in bcc for the same message', async () => {
      const box = mailbox('retry-hops');
      const h = HEADERS + 'bcc: bob@b.test, eve@b.test\n';
      await give(box, tarOf(entry('headers', `received: from a.test by b.test; 2026-01-02T03:04:06Z\n${h}`), entry('body', 'one\n')));
      await give(
        box,
        tarOf(entry('headers', `received: from a.test by b.test; 2026-01-02T04:00:00Z\n${h.replace(', eve@b.test', '')}`), entry('body', 'one\n')),
      );
      assert.deepEqual(stored(box), [id]);
    });

    it('takes a FIFO or a link where a stored copy would be for other content: stored at once under its conflict name, never a hang or a false OK', async () => {
      const storedApart = (box: string) => {
        const names = stored(box).filter((n) => n !== id);
        assert.equal(names.length, 1, `one message under its conflict name in ${stored(box).join(' ')}`);
        assert.equal(readFileSync(join(box, 'new', names[0], 'body'), 'utf8'), 'one\n', 'the whole message is stored');
      };
      // A FIFO in place of the legacy digest file: reading it would wait for a writer forever.
      const fifoBox = mailbox('planted-fifo');
      mkdirSync(join(fifoBox, 'cur', id));
      const fifo = spawnSync('mkfifo', [join(fifoBox, 'cur', id, '.digest')]);
      assert.equal(fifo.status, 0, String(fifo.stderr));
      const r = await runCommand('timeout', ['20', join(BIN, 'give-recipient'), '--address', 'bob@b.test', fifoBox], { input: one, env: testEnv() });
      assert.equal(r.code, 0, `${r.stdout}${r.stderr} (124: killed by timeout)`);
      assert.equal(r.stdout.toString(), 'OK bob@b.test\n');
      storedApart(fifoBox);
      // A link to the same message stored elsewhere, in cur/ and in new/: readers refuse it, so it stores nothing.
      const elsewhere = mailbox('planted-link-target');
      await give(elsewhere, one);
      for (const folder of ['cur', 'new']) {
        const box = mailbox(`planted-link-${folder}`);
        symlinkSync(join(elsewhere, 'new', id), join(box, folder, id));
        await give(box, one);
        storedApart(box);
      }
    });

    it('never answers a retry OK for a stored copy that differs from it (one cut short before this fix)', async () => {
      const box = mailbox('incomplete');
      mkdirSync(join(box, 'new', id));
      writeFileSync(join(box, 'new', id, 'headers'), HEADERS);
      await give(box, one);
      const names = stored(box);
      assert.equal(names.length, 2);
      assert.equal(
        readFileSync(
          join(
            box,
            'new',
            names.find((n) => n !== id)!,
            'body',
          ),
          'utf8',
        ),
        'one\n',
        'the whole message is stored',
      );
    });
  });

  it('a FILE that is missing or a directory exits 66 with one line naming it (not TEMPFAIL), and stores nothing', async () => {
    const box = mailbox('noinput');
    for (const [file, problem] of [
      [join(dir, 'no-such.ima'), 'no such file'],
      [dir, 'is a directory'],
    ]) {
      const r = await runBin('give-recipient', ['--address', 'bob@b.test', box, file]);
      assert.equal(r.code, 66, `${r.stdout}${r.stderr}`);
      assert.equal(r.stderr, `give-recipient: ${file}: ${problem}\n`);
      assert.equal(r.stdout.length, 0, 'no result line: there was no message to deliver');
      assert.deepEqual(stored(box), []);
      assert.deepEqual(readdirSync(join(box, 'tmp')), []);
    }
  });

  it('finds the mailbox of an address through its template, and creates it only when told', async () => {
    const cfg = join(dir, 'gr.toml');
    writeFileSync(cfg, `mailbox = ${JSON.stringify(join(dir, 'tpl', '{domain}', '{local}'))}\n`);
    const msg = await makeMessage(['bob@b.test']);
    const missing = await runBin('give-recipient', ['--config', cfg, 'bob@b.test'], { input: msg });
    assert.equal(missing.code, 75);
    assert.match(missing.stdout.toString(), /^TEMPFAIL bob@b\.test 4\.2\.0 mailbox .* does not exist/);
    const made = await runBin('give-recipient', ['--config', cfg, '--create', 'bob@b.test'], { input: msg });
    assert.equal(made.code, 0, made.stderr);
    assert.equal(stored(join(dir, 'tpl', 'b.test', 'bob')).length, 1);
  });

  it('keeps bcc private: none for to/cc recipients, only their own address for a bcc recipient, in its place', async () => {
    const msg = await makeMessage(['--to', 'bob@b.test', '-b', 'Secret One <s1@b.test>, s2@b.test']);
    const read = async (addr: string) => {
      const box = mailbox(`bcc-${addr}`);
      const r = await runBin('give-recipient', ['--address', addr, box], { input: msg });
      assert.equal(r.code, 0, r.stderr);
      return readFileSync(join(box, 'new', stored(box)[0], 'headers'), 'utf8');
    };
    const names = (headers: string) => headers.split('\n').flatMap((l) => (l ? [l.slice(0, l.indexOf(':'))] : []));
    const bob = await read('bob@b.test');
    assert.doesNotMatch(bob, /^bcc:/m); // (a bare /bcc/ would match a message-id's hex)
    assert.deepEqual(names(bob), ['from', 'to', 'date', 'message-id']);
    const s1 = await read('s1@b.test');
    assert.match(s1, /^bcc: Secret One <s1@b\.test>$/m);
    assert.doesNotMatch(s1, /s2@/);
    assert.deepEqual(names(s1), ['from', 'to', 'bcc', 'date', 'message-id'], 'bcc where the sender put it: field order is kept');
  });

  it('keeps the other forms of a hidden list private too: a legacy Bcc group (mime-bcc), a second Bcc and a Resent-Bcc', async () => {
    const legacy =
      'From: a@a.test\r\nTo: bob@b.test\r\nBcc: Team: s1@b.test;\r\nBcc: s2@b.test\r\nResent-Bcc: s3@b.test\r\nSubject: x\r\nMessage-ID: <blind@a.test>\r\n\r\nhi\r\n';
    const converted = await runBin('mime-to-ima', [], { input: legacy });
    assert.equal(converted.code, 0, converted.stderr);
    const box = mailbox('blind-forms');
    const r = await runBin('give-recipient', ['--address', 'bob@b.test', box], { input: converted.stdout });
    assert.equal(r.code, 0, r.stderr);
    const headers = readFileSync(join(box, 'new', stored(box)[0], 'headers'), 'utf8');
    assert.match(headers, /^to: bob@b\.test$/m);
    assert.doesNotMatch(headers, /s[123]@b\.test/);
  });

  it('--clean removes only old leftovers in tmp/, never a delivery in progress, and leaves new/ alone', async () => {
    const box = mailbox('clean');
    const msg = await makeMessage(['bob@b.test']);
    assert.equal((await runBin('give-recipient', [box], { input: msg })).code, 0);
    const old = join(box, 'tmp', '1.crashed.abc');
    mkdirSync(old);
    writeFileSync(join(old, 'headers'), 'half');
    const twoDaysAgo = new Date(Date.now() - 48 * 3600 * 1000);
    utimesSync(old, twoDaysAgo, twoDaysAgo);
    const inProgress = join(box, 'tmp', '2.delivering.def');
    mkdirSync(inProgress);
    const r = await runBin('give-recipient', ['--clean', box]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /removed 1 stale entries from tmp\//);
    assert.deepEqual(readdirSync(join(box, 'tmp')), ['2.delivering.def']);
    assert.equal(stored(box).length, 1);
    // Nothing left to remove: nothing said (cron mails any output).
    const again = await runBin('give-recipient', ['--clean', box]);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(again.stderr, '');
  });

  it('--clean removes an old file or symbolic link left in tmp/ as it is: a link is removed, never followed', async () => {
    const box = mailbox('clean-other');
    const outside = join(dir, 'clean-other-target');
    mkdirSync(outside);
    writeFileSync(join(outside, 'keep.txt'), 'x\n');
    const twoDaysAgo = new Date(Date.now() - 48 * 3600 * 1000);
    writeFileSync(join(box, 'tmp', '1.crashed.file'), 'half');
    utimesSync(join(box, 'tmp', '1.crashed.file'), twoDaysAgo, twoDaysAgo);
    symlinkSync(outside, join(box, 'tmp', '2.planted.link'));
    // Old by the link's own time (lstat), not its target's.
    lutimesSync(join(box, 'tmp', '2.planted.link'), twoDaysAgo, twoDaysAgo);
    const r = await runBin('give-recipient', ['--clean', box]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /removed 2 stale entries from tmp\//);
    assert.deepEqual(readdirSync(join(box, 'tmp')), []);
    assert.deepEqual(readdirSync(outside), ['keep.txt'], 'what the link pointed at is untouched');
  });

  it('refuses a tmp/, new/ or cur/ that is a symbolic link: --clean removes nothing where it points, delivery (even --create) stores nothing', async () => {
    const msg = await makeMessage(['bob@b.test']);
    const victim = (name: string) => {
      const v = join(dir, `victim-${name}`);
      mkdirSync(v);
      writeFileSync(join(v, 'old.txt'), 'x\n');
      const tenDaysAgo = new Date(Date.now() - 10 * 24 * 3600 * 1000);
      utimesSync(join(v, 'old.txt'), tenDaysAgo, tenDaysAgo);
      return v;
    };
    const linked = (name: string, folder: string) => {
      const box = join(dir, `linked-${name}`);
      for (const f of ['tmp', 'new', 'cur'].filter((f) => f !== folder)) mkdirSync(join(box, f), { recursive: true });
      const v = victim(name);
      symlinkSync(v, join(box, folder));
      return { box, v };
    };
    const refused = (r: { code: number | null; stdout: Buffer; stderr: string }, path: string) => {
      assert.equal(r.code, 75, `${r.stdout}${r.stderr}`);
      assert.ok(r.stderr.includes(`${path}: not a directory (a symbolic link`), r.stderr);
    };

    const clean = linked('clean', 'tmp');
    const c = await runBin('give-recipient', ['--clean', clean.box]);
    refused(c, join(clean.box, 'tmp'));
    assert.deepEqual(readdirSync(clean.v), ['old.txt'], 'the file where tmp/ points is still there');

    for (const folder of ['tmp', 'new', 'cur']) {
      const { box, v } = linked(`deliver-${folder}`, folder);
      const r = await runBin('give-recipient', ['--create', '--address', 'bob@b.test', box], { input: msg });
      refused(r, join(box, folder));
      assert.match(r.stdout.toString(), new RegExp(`^TEMPFAIL bob@b\\.test 4\\.2\\.0 ${join(box, folder)}: not a directory`));
      assert.deepEqual(readdirSync(v), ['old.txt'], `nothing stored where ${folder}/ points`);
      assert.deepEqual(readdirSync(box).sort(), ['cur', 'new', 'tmp']);
    }
  });

  const H = entry('headers', HEADERS);
  const hostile: [string, Buffer][] = [
    ['a traversal name', tarOf(H, entry('attachments/../../../etc/x', 'pwn'))],
    ['a symlink entry', tarOf(H, header({ name: 'attachments/l', type: '2', linkname: '/etc/passwd' }))],
    ['a hard link entry', tarOf(H, header({ name: 'attachments/l', type: '1', linkname: 'headers' }))],
    ['oversize headers', tarOf(entry('headers', HEADERS + `x-pad: ${'p'.repeat(70000)}\n`))],
    ['too many entries', tarOf(H, ...Array.from({ length: 1001 }, (_, i) => entry(`attachments/f${i}`, 'x')))],
    ['a truncated tar', tarOf(H, entry('body', 'x'.repeat(5000))).subarray(0, 2048)],
    ['no message-id', tarOf(entry('headers', 'from: a@a.test\nto: b@b.test\n'))],
    ['an impossible date (30 February)', tarOf(entry('headers', HEADERS.replace(/^date: .*$/m, 'date: 2026-02-30T09:30:00Z')))],
    ['a byte order mark before the headers', tarOf(entry('headers', `\uFEFF${HEADERS}`), entry('body', 'one\n'))],
    ['not a tar at all', Buffer.from('From: someone\r\n\r\nhello\r\n')],
  ];
  for (const [what, tar] of hostile) {
    it(`refuses ${what}: FAIL, exit 1, nothing in new/ or tmp/`, async () => {
      const box = mailbox(`hostile-${what.replace(/\W+/g, '-')}`);
      const r = await runBin('give-recipient', ['--address', 'bob@b.test', box], { input: tar });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stdout.toString(), /^FAIL bob@b\.test 5\.\d\.\d \S/);
      assert.equal(r.stdout.toString().split('\n').length, 2);
      assert.deepEqual(stored(box), []);
      assert.deepEqual(readdirSync(join(box, 'tmp')), []);
    });
  }
  void END;

  it('answers TEMPFAIL and leaves nothing in new/ when the file system is full', async (t) => {
    const mnt = join(dir, 'full');
    mkdirSync(mnt);
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=128k', 'tmpfs', mnt]);
    if (m.status !== 0) return t.skip(`cannot mount a tmpfs here: ${m.stderr}`);
    try {
      const box = join(mnt, 'box');
      for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(box, f), { recursive: true });
      const msg = await makeMessage(['-a', 'big.bin', 'bob@b.test']);
      const r = await runBin('give-recipient', ['--address', 'bob@b.test', box], { input: msg });
      assert.equal(r.code, 75, r.stderr);
      assert.match(r.stdout.toString(), /^TEMPFAIL bob@b\.test 4\.3\.1 .*no space left/);
      assert.deepEqual(readdirSync(join(box, 'new')), []);
      assert.deepEqual(readdirSync(join(box, 'tmp')), []);
    } finally {
      spawnSync('umount', [mnt]);
    }
  });

  it('never answers OK for a file cut short by a short write (RLIMIT_FSIZE inside the last chunk): TEMPFAIL, nothing stored', async (t) => {
    if (spawnSync('prlimit', ['--version']).status !== 0) return t.skip('prlimit (util-linux) is not installed');
    const box = mailbox('fsize');
    const msg = await makeMessage(['-a', 'big.bin', 'bob@b.test']);
    // Node ignores SIGXFSZ: the write that crosses the limit is short, the next one fails with EFBIG.
    const r = await runCommand('prlimit', [`--fsize=${big.length - 100}`, join(BIN, 'give-recipient'), '--address', 'bob@b.test', box], {
      input: msg,
      env: testEnv(),
    });
    assert.equal(r.code, 75, `${r.stdout}${r.stderr}`);
    assert.match(r.stdout.toString(), /^TEMPFAIL bob@b\.test 4\.\d\.\d .*EFBIG|file too large/i);
    assert.deepEqual(stored(box), []);
    assert.deepEqual(readdirSync(join(box, 'tmp')), []);
  });

  it('killed with SIGKILL at many points, leaves no message or a whole one in new/', async (t) => {
    const msg = await makeMessage(['-a', 'big.bin', 'bob@b.test']);
    const check = (box: string, point: string) => {
      const found = stored(box);
      assert.ok(found.length <= 1);
      if (found.length === 1) {
        const m = join(box, 'new', found[0]);
        assert.deepEqual(readFileSync(join(m, 'attachments', 'big.bin')), big, `kill point ${point}: partial attachment in new/`);
        assert.equal(readFileSync(join(m, 'body'), 'utf8'), 'Hello\n');
      }
      rmSync(box, { recursive: true, force: true });
    };
    // While reading: killed after k chunks of input.
    const chunk = 16 * 1024;
    for (const k of [0, 1, 2, 5, 10, 15, 19]) {
      const box = mailbox(`kill-${k}`);
      const child = spawn(join(BIN, 'give-recipient'), [box], { env: testEnv(), stdio: ['pipe', 'pipe', 'ignore'] });
      child.stdin.on('error', () => {});
      const exited = once(child, 'exit');
      for (let n = 0; n < Math.min(k, Math.ceil(msg.length / chunk)); n++) {
        if (!child.stdin.write(msg.subarray(n * chunk, (n + 1) * chunk))) await once(child.stdin, 'drain');
      }
      child.kill('SIGKILL');
      await exited;
      check(box, `${k} chunks`);
    }
    // After the input, at exact system calls (strace kills it there): making the message's
    // directory, the first fsync, the rename into new/, the fsync of new/.
    if (!strace) return t.skip('strace is not installed: the kill points after the input are not checked (apt-get install strace)');
    const points: [string, (box: string) => string[]][] = [
      ['mkdir', () => ['-e', 'trace=mkdir', '-e', 'inject=mkdir:signal=KILL']],
      ['first fsync', () => ['-e', 'trace=fsync', '-e', 'inject=fsync:signal=KILL:when=1']],
      ['rename', () => ['-e', 'trace=rename,renameat,renameat2', '-e', 'inject=rename,renameat,renameat2:signal=KILL']],
      ['fsync of new/', (box) => ['-P', join(box, 'new'), '-e', 'trace=fsync', '-e', 'inject=fsync:signal=KILL']],
    ];
    for (const [name, args] of points) {
      const box = mailbox(`kill-${name.replace(/\W/g, '')}`);
      const r = await traced(['-o', '/dev/null', ...args(box)], [box], msg);
      // strace ends the way its tracee did: by SIGKILL.
      assert.ok(r.signal === 'SIGKILL' || r.code === 137, `killed at ${name}: ${r.code} ${r.signal} ${r.stderr}`);
      check(box, name);
    }
  });
});
