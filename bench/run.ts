// `npm run bench`: runs every benchmark module beside this file in turn
// (each exports `run(): Promise<void>` and prints its figures as plain
// lines). BENCH=name runs only bench/name.ts.
import { readdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const only = process.env.BENCH;
const names = readdirSync(here)
  .filter((f) => f.endsWith('.js') && f !== 'run.js' && !f.startsWith('_'))
  .map((f) => f.slice(0, -3))
  .filter((n) => !only || n === only)
  .sort();
for (const name of names) {
  const mod = (await import(`./${name}.js`)) as { run?: () => Promise<void> };
  if (typeof mod.run !== 'function') continue;
  console.log(`== ${name}`);
  await mod.run();
}
