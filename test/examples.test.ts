// The example systemd units in config/examples, read by systemd itself
// (systemd-analyze verify): a misspelt key, a socket without a Listen
// setting or a unit naming a program the package does not have fails here,
// not on an operator's machine.
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ROOT, runCommand, tempDir } from './helpers.js';

const EXAMPLES = join(ROOT, 'config', 'examples');
const units = readdirSync(EXAMPLES).filter((f) => /\.(service|socket)$/.test(f));
const programs = new Set(Object.keys(JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).bin as Record<string, string>));

test('the example systemd units pass systemd-analyze verify; each runs a program of the package', async () => {
  assert.ok(units.some((u) => u.startsWith('smtp-receive-mx.')) && units.some((u) => u.startsWith('smtp-receive-submission.')), 'units for both ports');
  // A copy: verify loads the units beside the ones named (a socket's service), and writes nothing.
  const dir = tempDir('ima-units-');
  for (const u of units) copyFileSync(join(EXAMPLES, u), join(dir, u));
  const r = await runCommand('systemd-analyze', ['verify', '--man=no', ...units.map((u) => join(dir, u))], {
    env: { ...process.env, SYSTEMD_LOG_LEVEL: 'warning' },
  });
  // The programs are installed in /usr/bin on an operator's machine, not here: that complaint is the only one allowed.
  const notInstalled = /^\S+: Command \/usr\/bin\/(\S+) is not executable: No such file or directory$/;
  const lines = r.stderr.toString().split('\n').filter(Boolean);
  const other = lines.filter((l) => !notInstalled.test(l));
  assert.deepEqual(other, [], `systemd-analyze verify:\n${r.stderr}`);
  const named = lines.map((l) => notInstalled.exec(l)![1]);
  for (const p of named) assert.ok(programs.has(p), `a unit runs /usr/bin/${p}, which is not a program of the package`);
  assert.ok(named.includes('smtp-receive') && named.includes('server-receive'), `units checked: ${[...new Set(named)].join(', ')}`);
  // 1: it found the programs missing, as above; anything else (127: no systemd-analyze) is a failure of its own.
  assert.ok(r.code === 0 || r.code === 1, `systemd-analyze exited ${r.code}: ${r.stderr}`);
});
