// A long-running program's young generation (src/heap.ts): under a load that
// keeps objects alive across collections, server-receive's stops growing at
// YOUNG_GENERATION_LIMIT, while a stage's grows as V8 decides.
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { YOUNG_GENERATION_LIMIT } from '../src/heap.js';
import { config, startServer } from './imdp-fixture.js';
import { BIN, runCommand, tempDir, testEnv } from './helpers.js';

const dir = tempDir('ima-heap-');

// Loaded before the program (node -r): a load like a busy server's, in many
// turns of the event loop, each keeping what it made for the next 20 turns;
// then the young generation's size on stderr.
const LOAD = join(dir, 'load.cjs');
writeFileSync(
  LOAD,
  `const { getHeapSpaceStatistics } = require('node:v8');
const kept = [];
let turn = 0;
const step = () => {
  const made = [];
  for (let i = 0; i < 20000; i++) made.push({ i, text: 'x' + i });
  kept.push(made);
  if (kept.length > 20) kept.shift();
  if (++turn < 250) return setImmediate(step);
  kept.length = 0;
  const young = getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size;
  process.stderr.write('YOUNG ' + young + '\\n');
};
setImmediate(step);
`,
);

/** bin/NAME's program run by node with the load loaded first. */
const underLoad = ['sh', '-c', `exec "${process.execPath}" -r "${LOAD}" "${BIN}/$0" "$@"`];

const youngIn = (log: string) => Number(/YOUNG (\d+)/.exec(log)?.[1]);

describe('heap: the young generation', () => {
  it('stops growing at the limit in server-receive, not in a stage under the same load', async () => {
    const server = await startServer(config(), { launcher: underLoad });
    try {
      await server.waitLog(/YOUNG \d+/, 60_000);
      const young = youngIn(server.log());
      assert.ok(young > 0 && young <= YOUNG_GENERATION_LIMIT, `server-receive's young generation: ${young} bytes`);
    } finally {
      await server.stop();
    }
    // The same load in a stage, which leaves V8 its default: the load is one that grows it past the limit.
    const box = join(dir, 'box');
    for (const sub of ['tmp', 'new', 'cur']) mkdirSync(join(box, sub), { recursive: true });
    const [cmd, ...pre] = underLoad;
    const stage = await runCommand(cmd, [...pre, 'give-recipient', '--clean', box], { env: testEnv() });
    assert.equal(stage.code, 0, stage.stderr);
    assert.ok(youngIn(stage.stderr) > YOUNG_GENERATION_LIMIT, stage.stderr);
  });
});
