import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PassThrough, Readable } from 'node:stream';
import { BIN, runBin, runCommand, runHoldingStdin, runMain, tempDir, testEnv } from '../helpers.js';
import { HEADERS, entry, entryOffsets } from '../tarbuild.js';

const dir = tempDir();
const boxes = join(dir, 'mail');
for (const u of ['bob', 'carol', 'dave', 'post']) for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(boxes, u, f), { recursive: true });

// Route commands of every kind of failure, as real executables.
function script(name: string, body: string): string {
  const p = join(dir, name);
  writeFileSync(p, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  return p;
}
const crash = script('crash.sh', 'cat > /dev/null; kill -SEGV $$');
const slow = script('slow.sh', 'cat > /dev/null; exec sleep 30');
const perm = script('perm.sh', 'cat > /dev/null; echo "FAIL $1 5.2.2 mailbox full for good"; exit 1');
const temp = script('temp.sh', 'cat > /dev/null; echo "TEMPFAIL $1 4.2.2 over quota"; exit 75');
const weird = script('weird.sh', 'cat > /dev/null; echo "note: weird exit"; exit 2');
const liar = script('liar.sh', 'cat > /dev/null; echo "OK $1"; exit 75');
// Says when it starts, keeps what it reads.
const streamed = join(dir, 'streamed');
const stream = script('stream.sh', `echo started > ${streamed}.started; cat > ${streamed}; echo "OK $1"`);
// It exists and is executable (the config check passes) but cannot start: its interpreter is gone.
const broken = join(dir, 'broken.sh');
writeFileSync(broken, '#!/nonexistent/interpreter\n', { mode: 0o755 });

const cfg = join(dir, 'him.toml');
writeFileSync(
  cfg,
  `command_timeout = "3s"
[domains."b.test"]
command = ["give-recipient", "--address", "{address}", ${JSON.stringify(join(boxes, '{local}'))}]
users = ["bob", "carol", "dave"]
[domains."c.test"]
catch_all = "post@c.test"
[routes]
"post@c.test" = ["give-recipient", "--address", "{address}", ${JSON.stringify(join(boxes, 'post'))}]
"crash@b.test" = [${JSON.stringify(crash)}]
"slow@b.test" = [${JSON.stringify(slow)}]
"perm@b.test" = [${JSON.stringify(perm)}]
"temp@b.test" = [${JSON.stringify(temp)}]
"weird@b.test" = [${JSON.stringify(weird)}]
"liar@b.test" = [${JSON.stringify(liar)}]
"missing@b.test" = [${JSON.stringify(broken)}]
"stream@b.test" = [${JSON.stringify(stream)}]
[aliases]
"team@b.test" = ["bob@b.test", "carol@b.test"]
"postmaster@b.test" = ["dave@b.test"]
`,
);

async function message(...rcpts: string[]): Promise<Buffer> {
  const r = await runBin('make-message', ['-r', 'alice@a.test', '--text', 'hi', ...rcpts]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}
const count = (u: string) => readdirSync(join(boxes, u, 'new')).length;

/** Wait for something to become true (checked on a short timer), failing after 20 s. */
async function until(check: () => boolean, what: string): Promise<void> {
  for (const t0 = Date.now(); !check();) {
    if (Date.now() - t0 > 20_000) throw new Error(`waited 20 s for ${what}`);
    await new Promise((res) => setTimeout(res, 20));
  }
}

describe('handle-incoming-mail', () => {
  it('delivers to several local recipients, aliases and a catch-all, leaving foreign ones alone', async () => {
    const msg = await message('--to', 'bob@b.test, team@b.test', '-c', 'someone@c.test', '-b', 'postmaster@b.test', 'x@foreign.test');
    const r = await runBin('handle-incoming-mail', ['--config', cfg], { input: msg });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.toString().trim().split('\n').sort(), ['OK bob@b.test', 'OK postmaster@b.test', 'OK someone@c.test', 'OK team@b.test']);
    assert.deepEqual([count('bob'), count('carol'), count('dave'), count('post')], [1, 1, 1, 1]);
    const dave = readdirSync(join(boxes, 'dave', 'new'))[0];
    // dave gets it through an alias: the bcc line names postmaster, not him, so he sees none.
    assert.doesNotMatch(readFileSync(join(boxes, 'dave', 'new', dave, 'headers'), 'utf8'), /^bcc:/m);
  });

  it('answers NORECIPIENT for an unknown local address; mixed results exit 2', async () => {
    const r = await runBin('handle-incoming-mail', ['--config', cfg], { input: await message('bob@b.test', 'nobody@b.test') });
    assert.equal(r.code, 2);
    assert.deepEqual(r.stdout.toString().trim().split('\n'), ['OK bob@b.test', 'NORECIPIENT nobody@b.test']);
    const none = await runBin('handle-incoming-mail', ['--config', cfg], { input: await message('nobody@b.test') });
    assert.equal(none.code, 1);
  });

  /** A config for b.test with its own mailboxes of bob, carol and dave, and `extra` appended; its file and mailbox root. */
  function ownBoxes(name: string, domainExtra: string, extra = ''): { file: string; root: string; count: (u: string) => number } {
    const root = tempDir();
    for (const u of ['bob', 'carol', 'dave']) for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(root, u, f), { recursive: true });
    const file = join(root, `${name}.toml`);
    writeFileSync(
      file,
      `[domains."b.test"]\ncommand = ["give-recipient", "--address", "{address}", ${JSON.stringify(join(root, '{local}'))}]\n${domainExtra}\n${extra}`,
    );
    return { file, root, count: (u) => readdirSync(join(root, u, 'new')).length };
  }

  it('delivers what a catch_all naming an alias receives to every member of the alias, not the first alone', async () => {
    const own = ownBoxes(
      'catch-all-alias',
      'users = ["bob", "carol", "dave"]\ncatch_all = "staff@b.test"',
      '[aliases]\n"staff@b.test" = ["bob@b.test", "carol@b.test"]\n',
    );
    const r = await runBin('handle-incoming-mail', ['--config', own.file], { input: await message('stranger@b.test') });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.toString().trim().split('\n'), ['OK stranger@b.test']);
    assert.deepEqual([own.count('bob'), own.count('carol'), own.count('dave')], [1, 1, 0]);
  });

  it('matches a listed user, a route and an alias in any ASCII case, and stores into the mailbox the table names, never the catch_all', async () => {
    const own = ownBoxes(
      'any-case',
      'users = ["bob", "dave"]\ncatch_all = "dave@b.test"',
      `[routes]\n"carol@b.test" = ["give-recipient", "--address", "{address}", "{local}"]\n[aliases]\n"team@b.test" = ["bob@b.test", "carol@b.test"]\n`,
    );
    const r = await runBin('handle-incoming-mail', ['--config', own.file], {
      input: await message('BOB@b.test', 'Carol@b.test', 'TEAM@b.test'),
      cwd: own.root,
    });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.toString().trim().split('\n').sort(), ['OK BOB@b.test', 'OK Carol@b.test', 'OK TEAM@b.test']);
    // bob and carol once each (the alias reaches the same mailboxes), the catch_all's dave nothing, and no mailbox of another spelling.
    assert.deepEqual([own.count('bob'), own.count('carol'), own.count('dave')], [1, 1, 0]);
    assert.deepEqual(
      readdirSync(own.root)
        .filter((f) => !f.endsWith('.toml'))
        .sort(),
      ['bob', 'carol', 'dave'],
    );
    const twice = ownBoxes('users-twice', 'users = ["bob", "Bob"]');
    const bad = await runBin('handle-incoming-mail', ['--config', twice.file, '--check', 'bob@b.test']);
    assert.equal(bad.code, 78);
    assert.match(bad.stderr, /domains\."b\.test"\.users: "Bob" names the user "bob" names already/);
  });

  it('serves a users entry written in NFD (josé as e and a combining accent) to josé@b.test, and refuses an entry that is no local part', async () => {
    const nfd = 'jose\u0301';
    const own = ownBoxes('nfd', `users = ["bob", "${nfd}"]`);
    for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(own.root, 'jos\u00e9', f), { recursive: true });
    const r = await runBin('handle-incoming-mail', ['--config', own.file], { input: await message('jos\u00e9@b.test') });
    assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
    assert.deepEqual(r.stdout.toString().trim().split('\n'), ['OK jos\u00e9@b.test']);
    assert.equal(own.count('jos\u00e9'), 1);
    const bad = ownBoxes('bad-user', 'users = ["bob", "a/b"]');
    const c = await runBin('handle-incoming-mail', ['--config', bad.file, '--check', 'bob@b.test']);
    assert.equal(c.code, 78);
    assert.match(c.stderr, /domains\."b\.test"\.users: "a\/b" is not a local part/);
  });

  const failures: [string, string, RegExp, number][] = [
    ['a crashing command', 'crash@b.test', /^TEMPFAIL crash@b\.test 4\.3\.0 /, 75],
    ['a command that times out', 'slow@b.test', /^TEMPFAIL slow@b\.test 4\.3\.0 /, 75],
    ['a permanent refusal', 'perm@b.test', /^FAIL perm@b\.test 5\.2\.2 mailbox full for good$/, 1],
    ['a temporary refusal', 'temp@b.test', /^TEMPFAIL temp@b\.test 4\.2\.2 over quota$/, 75],
    ['an unknown exit code', 'weird@b.test', /^TEMPFAIL weird@b\.test 4\.3\.0 .*exited 2/, 75],
    ['a command that says OK but exits 75', 'liar@b.test', /^TEMPFAIL liar@b\.test /, 75],
    ['a command that cannot be started', 'missing@b.test', /^TEMPFAIL missing@b\.test /, 75],
  ];
  for (const [what, rcpt, pattern, code] of failures) {
    it(`maps ${what} to ${code}, never OK`, async () => {
      const r = await runBin('handle-incoming-mail', ['--config', cfg], { input: await message(rcpt) });
      assert.equal(r.code, code, r.stderr);
      const lines = r.stdout.toString().trim().split('\n');
      assert.match(lines.at(-1)!, pattern);
    });
  }

  it("relays a command's other output lines", async () => {
    const r = await runBin('handle-incoming-mail', ['--config', cfg], { input: await message('weird@b.test') });
    assert.match(r.stdout.toString(), /^note: weird exit$/m);
  });

  it('--check answers per recipient from bare headers or addresses, delivering nothing', async () => {
    const before = count('bob');
    const h = await runBin('handle-incoming-mail', ['--config', cfg, '--check'], { input: 'from: a@a.test\nto: bob@b.test, ghost@b.test, x@foreign.test\n' });
    assert.equal(h.code, 2);
    assert.deepEqual(h.stdout.toString().trim().split('\n'), ['OK bob@b.test', 'NORECIPIENT ghost@b.test']);
    const a = await runBin('handle-incoming-mail', ['--config', cfg, '--check', 'team@b.test']);
    assert.equal(a.code, 0);
    const t = await runBin('handle-incoming-mail', ['--config', cfg, '--check'], { input: await message('carol@b.test') });
    assert.equal(t.code, 0);
    assert.equal(count('bob'), before);
  });

  it('--check answers and exits once it has the headers, though the writer keeps stdin open', async () => {
    // The headers entry and the start of the body; the rest never comes, and stdin stays open.
    const r = await runHoldingStdin('handle-incoming-mail', ['--config', cfg, '--check'], (await message('carol@b.test')).subarray(0, 2048));
    assert.equal(r.code, 0, 'it exited by itself, not killed at the deadline');
    assert.equal(r.stdout, 'OK carol@b.test\n');
  });

  it('gives the same results and the same stored files in-process as spawned (fresh mailboxes each)', async () => {
    const msg = await message('bob@b.test', 'team@b.test', 'x@c.test', 'nobody@b.test', 'perm@b.test');
    const run = async (inProcess: boolean) => {
      const root = tempDir();
      for (const u of ['bob', 'carol', 'post']) for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(root, u, f), { recursive: true });
      const file = join(root, 'him.toml');
      writeFileSync(file, `in_process = ${inProcess}\n${readFileSync(cfg, 'utf8').replaceAll(boxes, root)}`);
      const r = inProcess
        ? await runMain('handle-incoming-mail', ['--config', file], { input: msg })
        : await runBin('handle-incoming-mail', ['--config', file], { input: msg });
      // Every stored file, by mailbox and path, with its bytes.
      const files: Record<string, string> = {};
      for (const u of ['bob', 'carol', 'post'])
        for (const id of readdirSync(join(root, u, 'new')))
          for (const name of readdirSync(join(root, u, 'new', id), { recursive: true, withFileTypes: true }))
            if (name.isFile()) {
              const path = join(name.parentPath, name.name);
              files[path.slice(root.length)] = readFileSync(path, 'base64');
            }
      return { code: r.code, stdout: r.stdout.toString(), files };
    };
    const inproc = await run(true);
    const spawned = await run(false);
    assert.equal(inproc.code, 2);
    assert.equal(spawned.code, inproc.code);
    assert.equal(spawned.stdout, inproc.stdout);
    assert.equal(Object.keys(inproc.files).filter((f) => f.endsWith('/headers')).length, 3, 'bob, carol and post stored it');
    assert.deepEqual(spawned.files, inproc.files);
  });

  it('runs at most max_parallel route commands at once (real processes, observed)', async () => {
    const running = join(tempDir(), 'running');
    mkdirSync(running);
    const seen = join(dir, 'parallel.log');
    writeFileSync(seen, '');
    // Each command notes how many are running with it, works a while, then leaves.
    const work = script('work.sh', `cat > /dev/null; touch ${running}/$$; ls ${running} | wc -l >> ${seen}; sleep 1; rm ${running}/$$; echo "OK $1"`);
    const file = join(dir, 'parallel.toml');
    const users = ['p1', 'p2', 'p3', 'p4', 'p5'];
    writeFileSync(file, `max_parallel = 2\n[domains."b.test"]\ncommand = [${JSON.stringify(work)}]\nusers = ${JSON.stringify(users)}\n`);
    const r = await runBin('handle-incoming-mail', ['--config', file], { input: await message(...users.map((u) => `${u}@b.test`)) });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.toString().trim().split('\n').length, 5);
    const counts = readFileSync(seen, 'utf8').trim().split('\n').map(Number);
    assert.equal(counts.length, 5);
    assert.equal(Math.max(...counts), 2, `at most 2 at once, and 2 did run together: ${counts}`);
  });

  it('refuses a config with an alias loop or a foreign alias target (exit 78)', async () => {
    const bad = join(dir, 'loop.toml');
    writeFileSync(bad, '[domains."b.test"]\n[aliases]\n"a@b.test" = ["b@b.test"]\n"b@b.test" = ["a@b.test"]\n');
    const r = await runBin('handle-incoming-mail', ['--config', bad, '--check', 'a@b.test']);
    assert.equal(r.code, 78);
    assert.match(r.stderr, /loop\.toml: aliases: loop/);
    writeFileSync(bad, '[domains."b.test"]\n[aliases]\n"a@b.test" = ["x@elsewhere.test"]\n');
    const f = await runBin('handle-incoming-mail', ['--config', bad, '--check', 'a@b.test']);
    assert.equal(f.code, 78);
    assert.match(f.stderr, /not in a local domain/);
    writeFileSync(bad, '[routes]\n"a@b.test" = "give-recipient a@b.test"\n');
    const s = await runBin('handle-incoming-mail', ['--config', bad, '--check', 'a@b.test']);
    assert.equal(s.code, 78);
    assert.match(s.stderr, /routes\."a@b\.test": must be a list .* not a shell string/);
    writeFileSync(bad, '[domains."b.test"]\ncommand = ["true"]\n[domains."B.Test"]\ncommand = ["false"]\n');
    const twice = await runBin('handle-incoming-mail', ['--config', bad, '--check', 'a@b.test']);
    assert.equal(twice.code, 78);
    assert.match(twice.stderr, /domains\."B\.Test": names a domain another key names already \(b\.test\)/);
  });

  it('reads FILE relative to its working directory (in-process too); a missing FILE is 66 with one line', async () => {
    writeFileSync(join(dir, 'file.ima'), await message('bob@b.test'));
    const before = count('bob');
    const r = await runMain('handle-incoming-mail', ['--config', cfg, 'file.ima'], { cwd: dir });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(count('bob'), before + 1);
    const missing = await runBin('handle-incoming-mail', ['--config', cfg, join(dir, 'nonexistent.ima')]);
    assert.equal(missing.code, 66);
    assert.match(missing.stderr, /^handle-incoming-mail: .*nonexistent\.ima: no such file\n$/);
  });

  it('refuses a hostile message as FAIL with nothing stored', async () => {
    const before = count('bob');
    const r = await runBin('handle-incoming-mail', ['--config', cfg], { input: Buffer.from('not a message at all, just text\n') });
    assert.equal(r.code, 1);
    assert.match(r.stdout.toString(), /^FAIL - 5\.6\.0 /);
    assert.equal(count('bob'), before);
  });

  it('refuses a message cut off at an entry boundary (in-process give-recipient), stores nothing, and stores the whole retry', async () => {
    const msg = await message('carol@b.test');
    const [, body, end] = entryOffsets(msg);
    const before = count('carol');
    for (const at of [body, end]) {
      const r = await runMain('handle-incoming-mail', ['--config', cfg], { input: msg.subarray(0, at) });
      assert.equal(r.code, 1, r.stderr);
      assert.equal(r.stdout.toString(), 'FAIL carol@b.test 5.6.0 tar: truncated archive (no end-of-archive blocks)\n');
      assert.equal(count('carol'), before);
    }
    const whole = await runMain('handle-incoming-mail', ['--config', cfg], { input: msg });
    assert.equal(whole.code, 0, whole.stderr);
    assert.equal(count('carol'), before + 1);
    const id = /message-id: urn:uuid:(\S+)/.exec(msg.toString('latin1'))![1];
    assert.equal(readFileSync(join(boxes, 'carol', 'new', id, 'body'), 'utf8'), 'hi', 'the retry is stored whole');
  });

  it('stops spooling a tar bomb (2 million empty entries) at max_entries, far before its end', async () => {
    let produced = 0;
    const bomb = Readable.from(
      (function* () {
        const head = entry('headers', HEADERS.replace('b@b.test', 'bob@b.test'));
        produced += head.length;
        yield head;
        for (let n = 0; n < 2_000_000; n += 256) {
          const batch = Buffer.concat(Array.from({ length: 256 }, (_, i) => entry(`attachments/${n + i}`, '')));
          produced += batch.length;
          yield batch;
        }
      })(),
    );
    const before = count('bob');
    const r = await runMain('handle-incoming-mail', ['--config', cfg], { input: bomb });
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stdout.toString(), 'FAIL - 5.6.0 message has more than 1000 entries\n');
    assert.ok(produced < 4 * 1024 * 1024, `read ${produced} bytes of about 1 GB before refusing`);
    assert.equal(count('bob'), before);
  });

  it('streams a message with one command to run into it as it arrives: the command starts before the message has all come', async () => {
    const att = join(dir, 'one-mb.bin');
    writeFileSync(att, Buffer.alloc(1024 * 1024, 7));
    const msg = await message('-a', att, 'stream@b.test');
    const input = new PassThrough();
    const run = runMain('handle-incoming-mail', ['--config', cfg], { input });
    input.write(msg.subarray(0, 512 * 1024));
    await until(() => existsSync(`${streamed}.started`), 'the route command to start');
    assert.ok(!input.writableEnded);
    input.end(msg.subarray(512 * 1024));
    const r = await run;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.toString(), 'OK stream@b.test\n');
    assert.deepEqual(readFileSync(streamed), msg, 'the command got every byte');
  });

  it('stops the one command a message streams into when the rest of the message breaks a limit, and answers FAIL', async () => {
    const bomb = Readable.from(
      (function* () {
        yield entry('headers', HEADERS.replace('b@b.test', 'stream@b.test'));
        for (let n = 0; n < 20_000; n += 256) yield Buffer.concat(Array.from({ length: 256 }, (_, i) => entry(`attachments/${n + i}`, '')));
      })(),
    );
    const r = await runMain('handle-incoming-mail', ['--config', cfg], { input: bomb });
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stdout.toString(), 'FAIL - 5.6.0 message has more than 1000 entries\n');
  });

  it('answers TEMPFAIL, storing nothing, when the input it streams into its one command breaks off (a read error)', async () => {
    const att = join(dir, 'half-mb.bin');
    writeFileSync(att, Buffer.alloc(512 * 1024, 3));
    const msg = await message('-a', att, 'carol@b.test');
    const before = count('carol');
    const broken = Readable.from(
      (async function* () {
        yield msg.subarray(0, 300 * 1024);
        throw Object.assign(new Error('ECONNRESET: connection reset by peer'), { code: 'ECONNRESET' });
      })(),
    );
    const r = await runMain('handle-incoming-mail', ['--config', cfg], { input: broken });
    assert.equal(r.code, 75, r.stderr);
    assert.equal(r.stdout.toString(), 'TEMPFAIL carol@b.test 4.3.0 cannot spool the message: ECONNRESET: connection reset by peer\n');
    assert.equal(count('carol'), before);
    assert.deepEqual(readdirSync(join(boxes, 'carol', 'tmp')), []);
  });

  it('gives every recipient its TEMPFAIL line when the spool is full (RLIMIT_FSIZE), exit 75', async (t) => {
    if (spawnSync('prlimit', ['--version']).status !== 0) return t.skip('prlimit (util-linux) is not installed');
    const att = join(dir, 'two-mb.bin');
    writeFileSync(att, Buffer.alloc(2 * 1024 * 1024, 1));
    const msg = await message('-a', att, '--to', 'bob@b.test, carol@b.test', 'nobody@b.test');
    const before = [count('bob'), count('carol')];
    const r = await runCommand('prlimit', ['--fsize=262144', join(BIN, 'handle-incoming-mail'), '--config', cfg], { input: msg, env: testEnv() });
    assert.equal(r.code, 75, `${r.stdout}${r.stderr}`);
    assert.deepEqual(r.stdout.toString().trim().split('\n').sort(), [
      'NORECIPIENT nobody@b.test',
      'TEMPFAIL bob@b.test 4.3.0 cannot spool the message: EFBIG: file too large, write',
      'TEMPFAIL carol@b.test 4.3.0 cannot spool the message: EFBIG: file too large, write',
    ]);
    assert.deepEqual([count('bob'), count('carol')], before);
  });
});
