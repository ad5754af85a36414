import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { integer, loadConfig, optional, string, table } from '../src/config.js';
import { tempDir } from './helpers.js';

const schema = table({ name: optional(string(), 'none'), limit: optional(integer({ min: 1 }), 10) });

test('config: a file edited between runs of a long-lived process is read anew, even at the same size and time', () => {
  const file = join(tempDir(), 'x.toml');
  writeFileSync(file, 'name = "aaaa"\nlimit = 5\n');
  assert.deepEqual(loadConfig(schema, file, true).config, { name: 'aaaa', limit: 5 });
  assert.equal(loadConfig(schema, file, true).config.name, 'aaaa');
  writeFileSync(file, 'name = "bbbb"\nlimit = 7\n');
  assert.deepEqual(loadConfig(schema, file, true).config, { name: 'bbbb', limit: 7 });
  writeFileSync(file, 'name = "bbbb"\nlimit = 0\n');
  assert.throws(() => loadConfig(schema, file, true), /x\.toml.*limit/);
  rmSync(file);
  assert.deepEqual(loadConfig(schema, file, false).config, { name: 'none', limit: 10 }, 'optional and gone: the defaults');
  assert.throws(() => loadConfig(schema, file, true), /no such file/);
});

test("config: what a program is given is frozen, so one run cannot change the next one's config", () => {
  const file = join(tempDir(), 'y.toml');
  writeFileSync(file, 'name = "kept"\n');
  const { config } = loadConfig(schema, file, true);
  assert.throws(() => {
    (config as { name: string }).name = 'changed';
  }, TypeError);
  assert.equal(loadConfig(schema, file, true).config.name, 'kept');
});
