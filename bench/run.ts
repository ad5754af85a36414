// `npm run bench [-- --quick] [-- NAME...]`: every benchmark module beside
// this file in turn, peers started privately and measured in the same run,
// then one table: measure, figure, peer, ratio, target. --quick runs a fifth
// of the messages and smaller big files (a minute or two instead of several).
// Each module exports `run(bench)`; names on the command line run only those.
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Bench, WORKERS } from './_bench.js';
import { filesystemWarning } from './_measure.js';

const ORDER = ['startup', 'delivery', 'receive', 'fetch', 'big', 'mime', 'smtp-receive'];
const args = process.argv.slice(2);
const quick = args.includes('--quick');
const only = args.filter((a) => !a.startsWith('--'));
const root = mkdtempSync(join(tmpdir(), 'ima-bench-'));
chmodSync(root, 0o755); // Postfix and Dovecot run as their own users
const bench = new Bench(quick, root);
console.log(
  `bench: ${quick ? 'quick' : 'full'} run on a shared 2-core machine (expect noise); every spawned process gets the same environment, NODE_EXTRA_CA_CERTS and NODE_OPTIONS unset for all; server-receive and smtp-receive run ${WORKERS} worker(s) (IMA_BENCH_WORKERS)`,
);
const fsWarning = filesystemWarning(root);
if (fsWarning) console.log(`bench: warning: ${fsWarning}`);
// Where the time of the last run's clean-up is kept: a run started right
// after another would otherwise measure the kernel scanning past the inodes
// that clean-up freed (filesystemWarning), not the programs.
const lastCleanUp = join(tmpdir(), 'ima-bench-cleaned-up');
if (fsWarning) await waitOutCleanUp(lastCleanUp);
let failed = false;
try {
  for (const name of ORDER.filter((n) => only.length === 0 || only.includes(n))) {
    const mod = (await import(`./${name}.js`)) as { run: (b: Bench) => Promise<void> };
    console.log(`== ${name}`);
    const t0 = performance.now();
    try {
      await mod.run(bench);
    } catch (e) {
      failed = true;
      console.log(`  ${name} failed: ${(e as Error).stack ?? String(e)}`);
    }
    console.log(`  (${((performance.now() - t0) / 1000).toFixed(0)} s)`);
  }
} finally {
  rmSync(root, { recursive: true, force: true });
  if (fsWarning) writeFileSync(lastCleanUp, '');
}
console.log(`\n${bench.table()}`);
if (fsWarning) console.log(`\n${fsWarning}`);
process.exitCode = failed ? 1 : 0;

/**
 * Wait until 90 s have passed since the last run's clean-up (the time of
 * `stamp`). Measured here: creating 3,000 directories with a file each
 * cost 4-5x its usual kernel time for a minute after 80,000 of them were
 * deleted, and the usual time again 75 s after. ext4 skips an inode for
 * 30 s after it was deleted, 60 s while its inode table block is still to
 * be written.
 */
async function waitOutCleanUp(stamp: string): Promise<void> {
  const QUIET_AFTER = 90_000;
  let since: number;
  try {
    since = Date.now() - statSync(stamp).mtimeMs;
  } catch {
    return; // no earlier run here
  }
  if (since >= QUIET_AFTER) return;
  const wait = QUIET_AFTER - since;
  console.log(
    `bench: the last run cleaned up ${(since / 1000).toFixed(0)} s ago; waiting ${(wait / 1000).toFixed(0)} s until ext4 creates files at its usual cost again`,
  );
  await new Promise((r) => setTimeout(r, wait));
}
