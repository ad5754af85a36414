// A long-running program's heap (src/heap.ts): under a load that keeps
// objects alive across collections, server-receive's young generation stops
// growing at YOUNG_GENERATION_LIMIT and its old generation holds less of
// what died there, while a stage's grow as V8 decides.
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { YOUNG_GENERATION_LIMIT } from '../src/heap.js';
import { config, startServer } from './imdp-fixture.js';
import { BIN, runCommand, tempDir, testEnv } from './helpers.js';

const dir = tempDir('ima-heap-');

// Loaded before the program (node -r): a load like a busy server's, in many
// turns of the event loop, each keeping what it made for the next 20 turns
// (long enough to be moved to the old generation, where it then dies); then
// the young generation's size and the old generation's largest on stderr.
const LOAD = join(dir, 'load.cjs');
writeFileSync(
  LOAD,
  `const { getHeapSpaceStatistics } = require('node:v8');
const space = (name) => getHeapSpaceStatistics().find((s) => s.space_name === name).space_size;
const kept = [];
let turn = 0;
let old = 0;
const step = () => {
  const made = [];
  for (let i = 0; i < 20000; i++) made.push({ i, text: 'x' + i });
  kept.push(made);
  if (kept.length > 20) kept.shift();
  old = Math.max(old, space('old_space'));
  if (++turn < 250) return setImmediate(step);
  kept.length = 0;
  process.stderr.write('YOUNG ' + space('new_space') + ' OLD ' + old + '\\n');
};
setImmediate(step);
`,
);

/** bin/NAME's program run by node with the load loaded first. */
const underLoad = ['sh', '-c', `exec "${process.execPath}" -r "${LOAD}" "${BIN}/$0" "$@"`];

const youngIn = (log: string) => Number(/YOUNG (\d+)/.exec(log)?.[1]);
const oldIn = (log: string) => Number(/OLD (\d+)/.exec(log)?.[1]);
/** Between the old generation's peak under the load with src/heap.ts's growth and with V8's own. */
const OLD_BOUND = 112 * 1024 * 1024;

describe('heap: a long-running program', () => {
  it('stops its young generation at the limit and grows its old one less than a stage does under the same load', async () => {
    const server = await startServer(config(), { launcher: underLoad });
    let serverOld: number;
    try {
      await server.waitLog(/YOUNG \d+/, 60_000);
      const young = youngIn(server.log());
      assert.ok(young > 0 && young <= YOUNG_GENERATION_LIMIT, `server-receive's young generation: ${young} bytes`);
      serverOld = oldIn(server.log());
    } finally {
      await server.stop();
    }
    // The same load in a stage, which leaves V8 its default: the load is one that grows both past the server's.
    const box = join(dir, 'box');
    for (const sub of ['tmp', 'new', 'cur']) mkdirSync(join(box, sub), { recursive: true });
    const [cmd, ...pre] = underLoad;
    const stage = await runCommand(cmd, [...pre, 'give-recipient', '--clean', box], { env: testEnv() });
    assert.equal(stage.code, 0, stage.stderr);
    assert.ok(youngIn(stage.stderr) > YOUNG_GENERATION_LIMIT, stage.stderr);
    // Measured: server-receive 78-83 MB; the stage 146-162 MB, and server-receive without the growth set 152 MB.
    assert.ok(serverOld < OLD_BOUND, `server-receive's old generation peaked at ${serverOld} bytes`);
    assert.ok(oldIn(stage.stderr) > OLD_BOUND, stage.stderr);
  });
});
