import assert from 'node:assert/strict';
import { rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { MAX_TIMER, duration, integer, loadConfig, optional, string, table } from '../src/config.js';
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

test('config: a file left alone is vouched for by its stat, and any edit after that is still seen', async () => {
  const file = join(tempDir(), 'z.toml');
  writeFileSync(file, 'name = "cccc"\n');
  const old = new Date(Date.now() - 60_000);
  utimesSync(file, old, old);
  // ctime moved with utimes: wait (with a deadline) until the file counts as settled, as a config written long ago does.
  const deadline = Date.now() + 5000;
  while (Date.now() - statSync(file).ctimeMs <= 300 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const first = loadConfig(schema, file, true).config;
  assert.equal(first.name, 'cccc');
  assert.equal(loadConfig(schema, file, true).config, first, 'the same frozen object');
  writeFileSync(file, 'name = "dddd"\n');
  assert.equal(loadConfig(schema, file, true).config.name, 'dddd');
  writeFileSync(file, 'name = "eeee"\n');
  assert.equal(loadConfig(schema, file, true).config.name, 'eeee', 'edited again within the same tick, same size');
});

test('config: a duration is at most what a timer can wait (24.8 days), except where it is only an age', () => {
  const timeout = duration();
  assert.equal(timeout.parse(MAX_TIMER / 1000, 'stage_timeout'), MAX_TIMER);
  assert.equal(timeout.parse('596h', 'stage_timeout'), 596 * 3_600_000);
  assert.throws(() => timeout.parse('600h', 'stage_timeout'), /must be at most 2147483647ms \(about "596h", 24\.8 days/);
  assert.throws(() => timeout.parse((MAX_TIMER + 1) / 1000, 'stage_timeout'), /at most 2147483647ms/);
  assert.equal(duration({ timer: false }).parse('720h', 'max_lifetime'), 720 * 3_600_000, 'a 30-day lifetime is no timer');
});
