// `npm run demo`: the toolkit's main job, shown end to end with the real
// programs in a temporary directory. Each step prints the command it runs.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const bin = (name: string) => join(ROOT, 'bin', name);
const work = mkdtempSync(join(tmpdir(), 'ima-demo-'));
const env = { ...process.env, IMA_CONFIG_DIR: work };

function step(title: string, argv: string[], input?: string): string {
  console.log(`\n## ${title}\n$ ${argv.map((a) => (/[\s"']/.test(a) ? JSON.stringify(a) : a)).join(' ')}`);
  const r = spawnSync(argv[0], argv.slice(1), { cwd: work, env, input, encoding: 'utf8' });
  if (r.stdout) process.stdout.write(r.stdout);
  if (r.stderr) process.stderr.write(r.stderr);
  if (r.status !== 0) throw new Error(`${argv[0]} exited ${r.status ?? r.signal}`);
  return r.stdout;
}

try {
  writeFileSync(join(work, 'agenda.txt'), '1. Budget\n2. Holidays\n');
  step('alice@a.test composes a message with an attachment', [
    bin('make-message'), '-r', 'Alice <alice@a.test>', '-s', 'Meeting on Monday', '-a', 'agenda.txt', '-o', 'message.ima', 'bob@b.test',
  ], 'Hi Bob,\nthe agenda is attached.\nAlice\n');
  step('the message is a tar archive: standard tools read it', ['tar', 'tvf', 'message.ima']);
  step('its headers', ['tar', 'xOf', 'message.ima', 'headers']);
  console.log('\ndemo finished');
} finally {
  rmSync(work, { recursive: true, force: true });
}
