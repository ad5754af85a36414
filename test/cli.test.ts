import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import type { Argv } from 'yargs';
import { type ProgramSpec, parseFlags, quickParse } from '../src/cli.js';
import { optional, string, table } from '../src/config.js';
import type { Io } from '../src/io.js';

// A program with every kind of option the toolkit's programs declare.
const spec: ProgramSpec<unknown, unknown> = {
  name: 'cli-test',
  role: 'user',
  usage: '$0 [options] [ARG...]',
  schema: table({ x: optional(string(), '') }),
  options: (y: Argv) =>
    y
      .option('from', { alias: 'r', type: 'string', describe: 'a', requiresArg: true })
      .option('attach-as', { type: 'string', describe: 'b; repeatable', requiresArg: true })
      .option('body', { type: 'boolean', default: true, describe: 'c' })
      .option('days', { type: 'number', describe: 'd', requiresArg: true })
      .option('text', { type: 'string', describe: 'e', requiresArg: true })
      .option('body-file', { alias: 'f', type: 'string', describe: 'f', requiresArg: true })
      .option('force', { type: 'boolean', describe: 'g' })
      .conflicts('text', 'body-file'),
};

function io(): Io & { out: () => string } {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  stdout.on('data', (d) => (out += d));
  stderr.on('data', (d) => (out += d));
  return { stdin: new PassThrough(), stdout, stderr, env: {}, cwd: '/', out: () => out };
}

test('cli: the quick parser (yargs-parser alone) gives what full yargs gives for valid command lines', async () => {
  const lines = [
    [],
    ['a', 'b'],
    ['-r', 'x@y.test', 'b@c.test'],
    ['--from', 'z@y.test'],
    ['--attach-as', 'n=f', '--attach-as=m=g', '--no-body', '--days', '3'],
    ['--config', 'c.toml', '--check-config', '--verbose'],
    ['-f', 'file', '--force', '-12'],
    ['--body-file=x', '--quiet', '42'],
  ];
  for (const args of lines) {
    const quick = quickParse(spec, args);
    assert.ok(quick, `quick path taken for ${args.join(' ')}`);
    const full = await parseFlags(spec, args, io(), false);
    assert.deepEqual({ ...quick }, { ...(full as object) }, args.join(' '));
  }
});

test('cli: help, version and every error go to full yargs, worded as before', async () => {
  for (const args of [
    ['--help'],
    ['-h'],
    ['a', '--', '1'],
    ['--version'],
    ['--nope'],
    ['--from'],
    ['--days', 'x'],
    ['--text', 'a', '--body-file', 'b'],
    ['-r'],
  ]) {
    assert.equal(quickParse(spec, args), undefined, args.join(' '));
  }
  const i = io();
  assert.equal(await parseFlags(spec, ['--nope'], i), 64);
  assert.match(i.out(), /^cli-test: Unknown argument: nope\nTry 'cli-test --help'/);
  const h = io();
  assert.equal(await parseFlags(spec, ['--help'], h), 0);
  assert.match(h.out(), /--attach-as/);
});

test('cli: an option given twice is a usage error unless its help says it is repeatable; a flag given twice is harmless', async () => {
  for (const args of [
    ['-r', 'x@y.test', '--from', 'z@y.test'],
    ['--days', '1', '--days', '2'],
    ['--text=a', '--text=b'],
  ]) {
    for (const quick of [true, false]) {
      const i = io();
      assert.equal(await parseFlags(spec, args, i, quick), 64, args.join(' '));
      assert.match(i.out(), /^cli-test: --(from|days|text) given more than once\nTry 'cli-test --help'/);
    }
  }
  const ok = await parseFlags(spec, ['--attach-as', 'n=f', '--attach-as', 'm=g', '--force', '--force'], io());
  assert.deepEqual((ok as unknown as { attachAs: string[] }).attachAs, ['n=f', 'm=g']);
});
