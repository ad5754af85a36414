// `npm run bench [-- --quick] [-- NAME...]`: every benchmark module beside
// this file in turn, peers started privately and measured in the same run,
// then one table: measure, figure, peer, ratio, target. --quick runs a fifth
// of the messages and smaller big files (a minute or two instead of several).
// Each module exports `run(bench)`; names on the command line run only those.
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
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
}
console.log(`\n${bench.table()}`);
if (fsWarning) console.log(`\n${fsWarning}`);
process.exitCode = failed ? 1 : 0;
