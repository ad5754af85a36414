// Builds dist/bundle from tsc's output (dist/src), for the launchers in bin/:
//   boot.cjs          the loader (src/boot.ts);
//   ima.cjs           the entry: the runner and the program registry;
//   NAME-HASH.cjs     one chunk per program (loaded when it runs) and per
//                     dynamically imported package (yargs for --help and
//                     errors, mailauth for verdicts), and shared chunks,
//                     one per set of entries that use the same code;
//   *.cjs.cache       a V8 code cache of each, made here by a training run.
// A profile of idle programs put a third of their RSS and most of their
// start in code they never ran: the whole toolkit (570 KB, its cache 460 KB)
// and, at the first package used, every package (5.8 MB) in one file. esbuild
// splits by reachability: a program reads only the chunks its own imports
// reach. esbuild splits ES modules only, so the chunks are built as ES
// modules and each then turned into a CommonJS body (import -> require,
// import() -> require in a promise), which boot.cjs compiles with its cache.
// Each .cjs starts with `//ima-build:` and the sha256 of the rest; a cache's
// first line repeats it with the Node version and architecture that made it,
// and boot.cjs uses a cache only when all three match (and V8 accepts it).
// The caches are written here only, inside dist/, never at run time.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
const OUT = join(ROOT, 'dist', 'bundle');

async function build() {
  const { build: esbuild, transform } = await import('esbuild');
  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(OUT, { recursive: true });
  const common = {
    bundle: true,
    platform: 'node',
    target: 'node20',
    logLevel: 'warning',
    absWorkingDir: ROOT,
  };
  // The loader: node builtins only.
  await esbuild({ ...common, format: 'cjs', entryPoints: ['dist/src/boot.js'], outfile: join(OUT, 'boot.cjs') });
  const entry = join(ROOT, 'dist', 'ima.js');
  writeFileSync(entry, "export { launch } from './src/run.js';\nexport { PROGRAMS, loadProgram } from './src/programs/index.js';\n");
  const out = await esbuild({
    ...common,
    entryPoints: [entry],
    format: 'esm',
    splitting: true,
    outdir: OUT,
    entryNames: '[name]',
    chunkNames: '[name]-[hash]',
    outExtension: { '.js': '.cjs' },
    write: false,
    metafile: true,
    // mailparser's html-to-text and linkify-it load on first use (src/mime/lazy.ts).
    alias: { 'html-to-text': './dist/src/mime/lazy.js', 'linkify-it': './dist/src/mime/lazy.js' },
    // boot.cjs passes each file's URL as __imaUrl.
    define: { 'import.meta.url': '__imaUrl' },
  });
  rmSync(entry);
  for (const file of out.outputFiles) {
    // An ES module's imports become require() of the loader boot.cjs gives each chunk;
    // import() too: a vm.Script has no module loader for it.
    const cjs = await transform(file.text, { format: 'cjs', platform: 'node', target: 'node20', supported: { 'dynamic-import': false }, logLevel: 'warning' });
    // The transform drops esbuild's per-module comments: the chunk names its modules at the top instead.
    const inputs = Object.keys(out.metafile.outputs[relative(ROOT, file.path)].inputs);
    mark(file.path, `${inputs.map((i) => `// ${i}\n`).join('')}${cjs.code}`);
  }
  // The training run: a fresh node, so that nothing of this one's state is in the caches.
  execFileSync(process.execPath, [fileURLToPath(import.meta.url), '--train'], { stdio: 'inherit' });
}

/** Write a bundle file with its first line: the sha256 of its content. */
function mark(file, code) {
  if (/[^\x00-\x7f]/.test(code.replace(/\/\/[^\n]*|\/\*[\s\S]*?\*\//g, ''))) {
    // boot.cjs reads the files as Latin-1; esbuild escapes all but comments.
    console.warn(`bundle: ${file} has non-ASCII code outside comments; check boot.ts's reading`);
  }
  const bytes = Buffer.from(code, 'utf8');
  const id = createHash('sha256').update(bytes).digest('hex');
  writeFileSync(file, Buffer.concat([Buffer.from(`//ima-build:${id}\n`, 'latin1'), bytes]));
}

/**
 * Load the entry, run what a spawned stage runs (a delivery, a routing,
 * --help), load every program, so that the functions a start calls are
 * compiled; then write what V8 compiled of each chunk as its cache. A chunk
 * no run touched (a package only some runs import) is loaded so that its
 * cache holds at least its top level.
 */
async function train() {
  const boot = createRequire(import.meta.url)(join(OUT, 'boot.cjs'));
  const bundle = boot.loadBundle(OUT, false);
  const { PROGRAMS, loadProgram } = bundle.core.exports;
  try {
    await exercise(loadProgram);
  } catch (e) {
    // The caches then hold the module bodies only: slower starts, same behaviour.
    console.warn(`bundle: training runs failed, caches cover module loading only: ${e.message}`);
  }
  for (const p of PROGRAMS) await loadProgram(p);
  for (const f of readdirSync(OUT)) if (f.endsWith('.cjs') && f !== 'boot.cjs') bundle.unit(f);
  for (const unit of bundle.units.values()) {
    const file = `${unit.file}.cache`;
    writeFileSync(file, Buffer.concat([Buffer.from(boot.cacheHeader(unit.buildId), 'latin1'), unit.script.createCachedData()]));
    chmodSync(file, 0o444);
  }
  process.exit(0);
}

/** The stages' usual runs, in a scratch directory: give-recipient --clean and a delivery, handle-incoming-mail --check and a delivery, --help. */
async function exercise(loadProgram) {
  const dir = mkdtempSync(join(tmpdir(), 'ima-train-'));
  try {
    const box = join(dir, 'bob');
    for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(box, f), { recursive: true });
    const cfg = join(dir, 'him.toml');
    writeFileSync(cfg, `[domains."b.test"]\ncommand = ["give-recipient", "--address", "{address}", ${JSON.stringify(box)}]\nusers = ["bob"]\n`);
    const run = async (name, args, input) => {
      const out = [];
      const stdout = new Writable({ write: (c, _e, cb) => (out.push(c), cb()) });
      const stderr = new Writable({ write: (_c, _e, cb) => cb() });
      const env = { IMA_CONFIG_DIR: '/nonexistent', IMA_ALLOW_ROOT: '1', HOME: '/nonexistent', PATH: process.env.PATH };
      const code = await (await loadProgram(name))(args, { stdin: Readable.from(input ? [input] : []), stdout, stderr, env, cwd: dir });
      if (code !== 0) throw new Error(`training run ${name} ${args.join(' ')} exited ${code}`);
      return Buffer.concat(out);
    };
    const msg = await run('make-message', ['-r', 'alice@b.test', '--text', 'Hello\n', 'bob@b.test']);
    await run('give-recipient', ['--clean', box]);
    await run('give-recipient', ['--address', 'bob@b.test', box], msg);
    await run('handle-incoming-mail', ['--config', cfg, '--check'], msg);
    await run('handle-incoming-mail', ['--config', cfg], msg);
    await run('give-recipient', ['--help']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await (process.argv[2] === '--train' ? train() : build());
