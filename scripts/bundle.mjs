// Builds dist/bundle from tsc's output (dist/src), for the launchers in bin/:
//   boot.cjs    the loader (src/boot.ts);
//   ima.cjs     the toolkit's code and the few small packages the spawned
//               stages need at start (CORE below);
//   vendor.cjs  every other package, loaded on first use;
//   *.cjs.cache V8 code caches of both, made here by a training run.
// Each .cjs starts with `//ima-build:` and the sha256 of the rest; a cache's
// first line repeats it with the Node version and architecture that made it,
// and boot.cjs uses a cache only when all three match (and V8 accepts it).
// The caches are written here only, inside dist/, never at run time.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Script } from 'node:vm';

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
const OUT = join(ROOT, 'dist', 'bundle');

/** Packages ima.cjs carries: those give-recipient and handle-incoming-mail load at start. */
const CORE = new Set(['yargs-parser', 'smol-toml', 'tar-stream']);

const packageOf = (spec) =>
  spec
    .split('/')
    .slice(0, spec.startsWith('@') ? 2 : 1)
    .join('/');

async function build() {
  const { build: esbuild } = await import('esbuild');
  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(OUT, { recursive: true });
  const common = {
    bundle: true,
    format: 'cjs',
    platform: 'node',
    target: 'node20',
    logLevel: 'warning',
    absWorkingDir: ROOT,
    // mailparser's html-to-text and linkify-it load on first use (src/mime/lazy.ts).
    alias: { 'html-to-text': './dist/src/mime/lazy.js', 'linkify-it': './dist/src/mime/lazy.js' },
    // boot.cjs passes each file's URL as __imaUrl.
    define: { 'import.meta.url': '__imaUrl' },
  };
  // The loader: node builtins only.
  await esbuild({ ...common, entryPoints: ['dist/src/boot.js'], outfile: join(OUT, 'boot.cjs'), define: {} });
  // The toolkit: a package outside CORE, imported by the toolkit's code, is left to vendor.cjs.
  const vendored = new Set();
  const split = {
    name: 'vendor-split',
    setup(b) {
      b.onResolve({ filter: /^[^./]/ }, (a) => {
        if (a.path.startsWith('node:') || a.importer.includes('/node_modules/') || CORE.has(packageOf(a.path))) return undefined;
        vendored.add(a.path);
        // import() of an external would stay import(), which a vm.Script cannot do: a stand-in module require()s it.
        if (a.kind === 'dynamic-import') return { path: a.path, namespace: 'vendor-import' };
        return { path: a.path, external: true };
      });
      b.onLoad({ filter: /.*/, namespace: 'vendor-import' }, (a) => ({
        contents: `export * from ${JSON.stringify(a.path)};\nexport { default } from ${JSON.stringify(a.path)};\n`,
        loader: 'js',
      }));
    },
  };
  await esbuild({
    ...common,
    stdin: {
      contents: "export { launch } from './dist/src/run.js';\nexport { PROGRAMS, loadProgram } from './dist/src/programs/index.js';\n",
      resolveDir: ROOT,
      sourcefile: 'bundle-entry.js',
    },
    outfile: join(OUT, 'ima.cjs'),
    plugins: [split],
  });
  // The packages, each behind a function so that only what is asked for runs.
  const entries = [...vendored].sort().map((id) => `  ${JSON.stringify(id)}: () => require(${JSON.stringify(id)}),`);
  await esbuild({
    ...common,
    stdin: { contents: `module.exports = {\n${entries.join('\n')}\n};\n`, resolveDir: ROOT, sourcefile: 'vendor-entry.js' },
    outfile: join(OUT, 'vendor.cjs'),
  });
  for (const name of ['ima.cjs', 'vendor.cjs']) mark(join(OUT, name));
  // The training run: a fresh node, so that nothing of this one's state is in the caches.
  execFileSync(process.execPath, [fileURLToPath(import.meta.url), '--train'], { stdio: 'inherit' });
}

/** Give a bundle file its first line: the sha256 of its content. */
function mark(file) {
  const code = readFileSync(file, 'latin1');
  if (/[^\x00-\x7f]/.test(code.replace(/\/\/[^\n]*|\/\*[\s\S]*?\*\//g, ''))) {
    // boot.cjs reads the files as Latin-1; esbuild escapes all but comments.
    console.warn(`bundle: ${file} has non-ASCII code outside comments; check boot.ts's reading`);
  }
  const id = createHash('sha256').update(code, 'latin1').digest('hex');
  writeFileSync(file, `//ima-build:${id}\n${code}`, 'latin1');
}

/**
 * Compile both files, then run what a spawned stage runs (every program's
 * module top level, a delivery, a routing), so that the functions a start
 * calls are compiled; write what V8 compiled as the caches.
 */
async function train() {
  const boot = createRequire(import.meta.url)(join(OUT, 'boot.cjs'));
  const save = (unit) => {
    const file = `${unit.file}.cache`;
    writeFileSync(file, Buffer.concat([Buffer.from(boot.cacheHeader(unit.buildId), 'latin1'), unit.script.createCachedData()]));
    chmodSync(file, 0o444);
  };
  // vendor.cjs's cache holds its compile only, none of the packages' code: a
  // cache deserializes whole, and a program that never loads mailauth (an mx
  // without verdicts) must not carry its compiled code (smtp-receive memory test).
  const vendorFile = join(OUT, 'vendor.cjs');
  const vendorCode = readFileSync(vendorFile, 'latin1');
  const vendorScript = new Script(boot.wrap(vendorCode), { filename: vendorFile });
  save({ file: vendorFile, buildId: boot.buildIdOf(vendorCode), script: vendorScript });
  const bundle = boot.loadBundle(OUT, false);
  const { PROGRAMS, loadProgram } = bundle.core.exports;
  try {
    await exercise(loadProgram);
  } catch (e) {
    // The caches then hold the module bodies only: slower starts, same behaviour.
    console.warn(`bundle: training runs failed, caches cover module loading only: ${e.message}`);
  }
  for (const p of PROGRAMS) await loadProgram(p);
  save(bundle.core);
  process.exit(0);
}

/** The stages' usual runs, in a scratch directory: give-recipient --clean and a delivery, handle-incoming-mail --check and a delivery. */
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
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await (process.argv[2] === '--train' ? train() : build());
