// Start-up of a spawned stage against bare node: the median wall time of
// `node -e 0` and of toolkit programs doing the least real work they can
// (give-recipient --clean on an empty mailbox, handle-incoming-mail --check
// on one message), interleaved so load on the machine hits both alike. Then
// the memory every run of a program pays before it does any work: the peak
// RSS of --help (its code and the packages it imports loaded, yargs for the
// help text), by GNU time, the least of three runs.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BIN, type Bench } from './_bench.js';
import { imaMessage } from './_measure.js';

const once = (argv: string[], env: NodeJS.ProcessEnv, input?: Buffer): number => {
  const t0 = performance.now();
  const r = spawnSync(argv[0], argv.slice(1), { env, input, stdio: [input ? 'pipe' : 'ignore', 'ignore', 'pipe'] });
  if (r.status !== 0) throw new Error(`${argv.join(' ')} exited ${r.status}: ${r.stderr}`);
  return performance.now() - t0;
};

const TIME = '/usr/bin/time';

/** Peak RSS in MB of one run (GNU time's %M), the least of three. */
const peakMb = (argv: string[], env: NodeJS.ProcessEnv): number => {
  let best = Infinity;
  for (let i = 0; i < 3; i++) {
    const r = spawnSync(TIME, ['-f', '%M', ...argv], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    if (r.status !== 0) throw new Error(`${argv.join(' ')} exited ${r.status}: ${r.stderr}`);
    best = Math.min(best, Number(/(\d+)\s*$/.exec(r.stderr.toString())![1]) / 1024);
  }
  return best;
};

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

export async function run(b: Bench): Promise<void> {
  const dir = b.fresh('startup');
  const box = join(dir, 'box');
  for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(box, f), { recursive: true });
  const cfg = join(dir, 'him.toml');
  writeFileSync(cfg, `[domains."b.test"]\ncommand = ["give-recipient", "--address", "{address}", "${box}"]\nusers = ["bob"]\n`);
  const msg = await imaMessage(4096);
  const runs = b.quick ? 9 : 21;
  const bare: number[] = [];
  const gr: number[] = [];
  const him: number[] = [];
  for (let i = 0; i < runs; i++) {
    bare.push(once([process.execPath, '-e', '0'], b.env));
    gr.push(once([join(BIN, 'give-recipient'), '--clean', box], b.env));
    him.push(once([join(BIN, 'handle-incoming-mail'), '--config', cfg, '--check'], b.env, msg));
  }
  const peer = { name: 'node -e 0', figure: median(bare) };
  b.row(`start-up: give-recipient --clean (median of ${runs})`, median(gr), 'ms', peer, '<= 1.5x');
  b.row(`start-up: handle-incoming-mail --check, one message (median of ${runs})`, median(him), 'ms', peer, '<= 1.5x');
  if (!existsSync(TIME)) return console.log(`  idle peak RSS: skipped (${TIME} not here: Debian package time)`);
  const bareRss = { name: 'node -e 0', figure: peakMb([process.execPath, '-e', '0'], b.env) };
  for (const name of ['give-recipient', 'handle-incoming-mail', 'mime-to-ima', 'smtp-receive', 'server-receive']) {
    b.row(`idle peak RSS: ${name} --help`, peakMb([join(BIN, name), '--help'], b.env), 'MB', bareRss, '< 100 MB');
  }
}
