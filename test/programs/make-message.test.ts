import assert from 'node:assert/strict';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { readMessage } from '../../src/message/index.js';
import { main } from '../../src/programs/make-message.js';
import { runBin, runCommand, tempDir, testEnv } from '../helpers.js';

async function entries(tar: Buffer) {
  const got: Record<string, string> = {};
  for await (const e of readMessage(Readable.from([tar]))) {
    if (e.kind === 'headers') got.headers = e.raw.toString();
    else {
      const parts: Buffer[] = [];
      for await (const c of e.stream) parts.push(c as Buffer);
      got[e.path] = Buffer.concat(parts).toString('latin1');
    }
  }
  return got;
}

describe('make-message (real process)', () => {
  const dir = tempDir();
  writeFileSync(join(dir, 'report.pdf'), Buffer.from([0, 1, 2, 255]));
  writeFileSync(join(dir, 'notes.txt'), 'notes');

  it('builds a message from stdin, flags, short forms and plain recipients', async () => {
    const r = await runBin(
      'make-message',
      [
        '-r',
        'Alice <alice@a.test>',
        '-s',
        'Quarterly',
        '-c',
        'carol@c.test',
        '-b',
        'dave@d.test',
        '-a',
        'report.pdf',
        '--attach-as',
        'summary.txt=notes.txt',
        '-H',
        'x-priority=high',
        '--to',
        'bob@b.test,eve@b.test',
        'frank@f.test',
      ],
      { input: 'Hello Bob\n', cwd: dir },
    );
    assert.equal(r.code, 0, r.stderr);
    const got = await entries(r.stdout);
    assert.match(
      got.headers,
      /^from: Alice <alice@a\.test>\nto: bob@b\.test, eve@b\.test, frank@f\.test\ncc: carol@c\.test\nbcc: dave@d\.test\nsubject: Quarterly\ndate: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\nmessage-id: urn:uuid:[0-9a-f-]{36}\nx-priority: high\n$/,
    );
    assert.equal(got.body, 'Hello Bob\n');
    assert.equal(got['attachments/report.pdf'], Buffer.from([0, 1, 2, 255]).toString('latin1'));
    assert.equal(got['attachments/summary.txt'], 'notes');
  });

  it('takes the sender from its config file', async () => {
    const cfg = join(dir, 'mm.toml');
    writeFileSync(cfg, 'from = "Config Sender <cs@a.test>"\n[headers]\norganization = "ACME"\n');
    const r = await runBin('make-message', ['--config', cfg, '--no-body', 'bob@b.test'], { cwd: dir });
    assert.equal(r.code, 0, r.stderr);
    const got = await entries(r.stdout);
    assert.match(got.headers, /^from: Config Sender <cs@a\.test>\n/m);
    assert.match(got.headers, /^organization: ACME$/m);
    assert.equal(got.body, undefined);
  });

  it('writes --output atomically and GNU tar lists it', async () => {
    const out = join(dir, 'm.ima');
    const r = await runBin('make-message', ['-r', 'a@a.test', '--text', 'hi', '-o', out, '-a', 'report.pdf', 'b@b.test'], { cwd: dir });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.length, 0);
    const list = await runCommand('tar', ['tf', out]);
    assert.deepEqual(list.stdout.toString().trim().split('\n'), ['headers', 'body', 'attachments/report.pdf']);
  });

  it('large attachments (read into reused buffers) come out byte for byte, to --output and to stdout', async () => {
    const big = (n: number, seed: number) => {
      const b = Buffer.alloc(n);
      for (let i = 0; i + 4 <= n; i += 4) b.writeUInt32LE(((i + seed) * 2654435761) >>> 0, i);
      return b;
    };
    const files = { 'a.bin': big(3 * 1024 * 1024 + 3, 1), 'b.bin': big(2 * 1024 * 1024 + 1, 7) };
    for (const [name, data] of Object.entries(files)) writeFileSync(join(dir, name), data);
    const args = ['-r', 'a@a.test', '--no-body', '-a', 'a.bin', '-a', 'b.bin', 'b@b.test'];
    const out = join(dir, 'big.ima');
    const toFile = await runBin('make-message', [...args, '-o', out], { cwd: dir });
    assert.equal(toFile.code, 0, toFile.stderr);
    const toStdout = await runBin('make-message', args, { cwd: dir });
    assert.equal(toStdout.code, 0, toStdout.stderr);
    writeFileSync(join(dir, 'stdout.ima'), toStdout.stdout);
    for (const ima of [out, join(dir, 'stdout.ima')]) {
      for (const [name, data] of Object.entries(files)) {
        const got = await runCommand('tar', ['xOf', ima, `attachments/${name}`]);
        assert.ok(got.stdout.equals(data), `${ima}: ${name}`);
      }
    }
  });

  it('takes every date-time RFC 3339 allows: a leap second, 29 February of a leap year, fractions and offsets', async () => {
    for (const date of ['2016-12-31T23:59:60Z', '2024-02-29T12:00:00Z', '2000-02-29T00:00:00.123456789-05:30', '2026-11-23T23:59:59+23:59']) {
      const r = await runBin('make-message', ['-r', 'a@a.test', '--date', date, 'b@b.test'], { cwd: dir });
      assert.equal(r.code, 0, `${date}: ${r.stderr}`);
      assert.match((await entries(r.stdout)).headers, new RegExp(`^date: ${date.replace(/[.+]/g, '\\$&')}$`, 'm'));
    }
    const leap = await runBin('make-message', ['-r', 'a@a.test', '--date', '2016-12-31T23:59:60Z', 'b@b.test'], { cwd: dir });
    const listed = await runCommand('tar', ['--utc', '-tvf', '-'], { input: leap.stdout });
    assert.match(listed.stdout.toString(), /2016-12-31 23:59 headers/, 'the entries carry the date as their time (not 1970)');
  });

  const failures: [string, string[], number, RegExp, string?][] = [
    ['no sender', ['b@b.test'], 64, /no sender/],
    ['no recipients', ['-r', 'a@a.test'], 64, /no recipients/],
    ['a bad recipient', ['-r', 'a@a.test', 'b@'], 64, /recipient: b@/],
    ['a bad --from', ['-r', 'nobody', 'b@b.test'], 64, /--from: nobody/],
    ['an unknown flag', ['--bogus'], 64, /Unknown argument: bogus/],
    ['a missing attachment', ['-r', 'a@a.test', '-a', 'missing.pdf', 'b@b.test'], 66, /--attach missing\.pdf: no such file/],
    ['a directory as attachment', ['-r', 'a@a.test', '-a', '.', 'b@b.test'], 64, /not a file name|not a regular file/],
    [
      'two attachments with one name',
      ['-r', 'a@a.test', '-a', 'notes.txt', '--attach-as', 'notes.txt=report.pdf', 'b@b.test'],
      64,
      /a second attachment named "notes\.txt"/,
    ],
    ['a bad attachment name', ['-r', 'a@a.test', '--attach-as', '../x=notes.txt', 'b@b.test'], 64, /contains "\/"/],
    ['a header set by its own flag', ['-r', 'a@a.test', '-H', 'from=x@y.test', 'b@b.test'], 64, /set by its own flag/],
    ['a bad header name', ['-r', 'a@a.test', '-H', 'Bad Name=x', 'b@b.test'], 64, /bad header name/],
    ['a bad date', ['-r', 'a@a.test', '--date', 'today', 'b@b.test'], 64, /RFC 3339/],
    ...['2026-02-31T00:00:00Z', '2026-02-29T00:00:00Z', '2026-01-01T24:00:00Z', '2026-01-01T00:00:00+24:00'].map((date): [string, string[], number, RegExp] => [
      `the date ${date}`,
      ['-r', 'a@a.test', '--date', date, 'b@b.test'],
      64,
      /is not an RFC 3339 date-time/,
    ]),
    ['a body that is not UTF-8', ['-r', 'a@a.test', 'b@b.test'], 65, /stdin: not valid UTF-8/, '\xff'],
  ];
  for (const [what, args, code, pattern, input] of failures) {
    it(`refuses ${what} with exit ${code}, one line, no output`, async () => {
      const out = join(dir, `fail-${code}-${what.replace(/\W+/g, '-')}.ima`);
      const r = await runBin('make-message', [...args, '-o', out], { cwd: dir, input: input === undefined ? '' : Buffer.from(input, 'latin1') });
      assert.equal(r.code, code, r.stderr);
      assert.match(r.stderr, pattern);
      assert.equal(
        r.stderr
          .trim()
          .split('\n')
          .filter((l) => !l.startsWith('Try ')).length,
        1,
        r.stderr,
      );
      assert.equal(existsSync(out), false);
      assert.deepEqual(
        readdirSync(dir).filter((f) => f.endsWith('.tmp')),
        [],
      );
    });
  }

  it('refuses a bad config with exit 78, naming file and key', async () => {
    const cfg = join(dir, 'bad.toml');
    writeFileSync(cfg, 'form = "typo@a.test"\n');
    const r = await runBin('make-message', ['--config', cfg, 'b@b.test']);
    assert.equal(r.code, 78);
    assert.match(r.stderr, /bad\.toml: form: unknown key/);
    writeFileSync(cfg, 'max_body_bytes = "lots"\n');
    const r2 = await runBin('make-message', ['--config', cfg, 'b@b.test']);
    assert.equal(r2.code, 78);
    assert.match(r2.stderr, /max_body_bytes: must be a size/);
    writeFileSync(cfg, 'from = \n');
    const r3 = await runBin('make-message', ['--config', cfg, 'b@b.test']);
    assert.equal(r3.code, 78);
    assert.match(r3.stderr, /bad\.toml: line 1: not valid TOML/);
  });

  it('refuses to write binary to a terminal unless forced', async () => {
    const tty = Object.assign(new PassThrough(), { isTTY: true });
    const stderr = new PassThrough();
    let err = '';
    stderr.on('data', (c) => (err += c));
    const io = { stdin: Readable.from([]), stdout: tty, stderr, env: testEnv(), cwd: dir };
    await assert.rejects(main(['-r', 'a@a.test', '--no-body', 'b@b.test'], io), /refusing to write a binary message to a terminal/);
    const chunks: Buffer[] = [];
    tty.on('data', (c: Buffer) => chunks.push(c));
    assert.equal(await main(['-r', 'a@a.test', '--no-body', '--force', 'b@b.test'], io), 0);
    assert.ok(Buffer.concat(chunks).length > 512);
  });

  it('prints --check-config and --help', async () => {
    const r = await runBin('make-message', ['--check-config']);
    assert.equal(r.code, 0);
    assert.match(r.stderr, /configuration OK/);
    assert.match(r.stdout.toString(), /max_body_bytes = 67108864/);
    const h = await runBin('make-message', ['--help']);
    assert.equal(h.code, 0);
    assert.match(h.stdout.toString(), /--attach-as/);
  });
});
