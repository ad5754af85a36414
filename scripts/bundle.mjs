// Builds dist/bundle from tsc's output (dist/src), for the launchers in bin/:
//   boot.cjs          the loader (src/boot.ts);
//   ima.cjs           a pack of chunks: the entry (main.cjs: the runner and
//                     the program registry) and every chunk give-recipient
//                     and handle-incoming-mail load;
//   NAME-HASH.cjs     one chunk per program (loaded when it runs) and per
//                     dynamically imported package (yargs for --help and
//                     errors, mailauth for verdicts), and shared chunks,
//                     one per set of entries that use the same code;
//   *.cjs.cache       a V8 code cache of each, made here by a training run;
//   ima.cjs.check.cache  the pack's cache trained on a recipient check alone
//                     (boot.ts, CHECK_CACHE).
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
import { basename, join, relative, resolve } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
const OUT = join(ROOT, 'dist', 'bundle');
/** The file holding the entry and the chunks of the programs started per message. */
const PACK = 'ima.cjs';
const PACKED_PROGRAMS = ['give-recipient', 'handle-incoming-mail'];

/**
 * Packages that ship an ES and a CommonJS build of the same code: the
 * toolkit and mailparser import one, mailsplit requires the other, and the
 * bundle carried both (two libmime, each with its MIME type tables built at
 * load). Every import of them takes the CommonJS build.
 */
const ONE_COPY = /^(libmime|libqp|libbase64)(\/|$)/;
const oneCopy = {
  name: 'one-copy',
  setup(b) {
    b.onResolve({ filter: ONE_COPY }, async (a) => {
      if (a.kind === 'require-call' || a.pluginData === 'one-copy') return undefined;
      const r = await b.resolve(a.path, { kind: 'require-call', importer: a.importer, resolveDir: a.resolveDir, pluginData: 'one-copy' });
      return r.errors.length ? undefined : { path: r.path };
    });
  },
};

/**
 * Packages mailauth requires at its start for BIMI only (scripts/stand-ins.cjs
 * says why): each import from mailauth's own code gets a stand-in that loads
 * the real package at first use.
 */
const STAND_INS = { undici: 'undici', '@postalsys/vmc': 'vmc', 'fast-xml-parser': 'xml' };
const standIns = {
  name: 'bimi-stand-ins',
  setup(b) {
    b.onResolve({ filter: /^(undici|@postalsys\/vmc|fast-xml-parser)$/ }, (a) =>
      /\/node_modules\/mailauth\/lib\//.test(a.importer) ? { path: a.path, namespace: 'stand-in' } : undefined,
    );
    // __filename: the chunk's path, from which the stand-in finds mailauth and its packages.
    b.onLoad({ filter: /.*/, namespace: 'stand-in' }, (a) => ({
      contents: `module.exports = require(${JSON.stringify(join(ROOT, 'scripts', 'stand-ins.cjs'))}).${STAND_INS[a.path]}(__filename);\n`,
      loader: 'js',
      resolveDir: ROOT,
    }));
  },
};

/**
 * libmime builds iconv-lite's GBK codec (its whole code table) when it loads,
 * only to have the decoder class all double-byte codecs share, which it
 * compares a codec's decoder against: 5-10 ms and 240 KB of every start of a
 * program that converts MIME (a CPU profile of mime-to-ima on a 300-byte
 * message). The bundle takes the class from iconv-lite's DBCS module instead,
 * the same function without the table. A libmime whose line differs is
 * bundled as it is, with a warning.
 */
const DBCS_LINE = "const DBCS_DECODER = iconv_lite_1.default.getCodec('gbk').decoder;";
const lazyDbcs = {
  name: 'libmime-dbcs',
  setup(b) {
    b.onLoad({ filter: /[\\/]node_modules[\\/]libmime[\\/]dist[\\/]cjs[\\/]charset\.js$/ }, (a) => {
      const code = readFileSync(a.path, 'utf8');
      if (!code.includes(DBCS_LINE)) {
        console.warn(`bundle: ${a.path} no longer has the line the bundle rewrites; bundled as it is`);
        return undefined;
      }
      const line = "const DBCS_DECODER = require('iconv-lite/encodings/dbcs-codec.js')._dbcs.prototype.decoder;";
      return { contents: code.replace(DBCS_LINE, line), loader: 'js' };
    });
  },
};

const boot = () => createRequire(import.meta.url)(join(OUT, 'boot.cjs'));

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
  const entry = join(ROOT, 'dist', 'main.js');
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
    plugins: [oneCopy, standIns, lazyDbcs],
  });
  rmSync(entry);
  // What each chunk holds and imports, for whoever asks why a program loads what it loads.
  writeFileSync(join(ROOT, 'dist', 'bundle-meta.json'), JSON.stringify(out.metafile));
  const chunks = new Map();
  for (const file of out.outputFiles) {
    const meta = out.metafile.outputs[relative(ROOT, file.path)];
    // An ES module's imports become require() of the loader boot.cjs gives each chunk;
    // import() too: a vm.Script has no module loader for it.
    const cjs = await transform(file.text, { format: 'cjs', platform: 'node', target: 'node20', supported: { 'dynamic-import': false }, logLevel: 'warning' });
    chunks.set(basename(file.path), {
      code: lazyBuiltinsUnwrapped(exportsInPlace(cjs.code, file.path)),
      // The transform drops esbuild's per-module comments: each file names its modules at the top instead.
      modules: Object.keys(meta.inputs),
      imports: meta.imports.filter((i) => i.kind === 'import-statement' && !i.external).map((i) => basename(i.path)),
    });
  }
  // The spawned stages' chunks in one file (a pack): a start reads one file
  // and deserializes one cache instead of a dozen (each costs a read, a
  // stat and V8's checks, about a millisecond in all per ten files).
  const packed = new Set();
  const reach = (name) => {
    if (packed.has(name)) return;
    packed.add(name);
    for (const i of chunks.get(name).imports) reach(i);
  };
  for (const [name] of chunks) if (name === 'main.cjs' || PACKED_PROGRAMS.some((p) => name.startsWith(`${p}-`))) reach(name);
  const bodies = [...packed].map(
    (name) => `${JSON.stringify(name)}: function (exports, require, module, __filename, __dirname, __imaUrl) {\n${chunks.get(name).code}},\n`,
  );
  const listing = (names) => [...new Set(names.flatMap((n) => chunks.get(n).modules))].map((m) => `// ${m}\n`).join('');
  mark(join(OUT, PACK), listing([...packed]), `module.exports.__imaPack = {\n${bodies.join('')}};\n`);
  for (const [name, chunk] of chunks) if (!packed.has(name)) mark(join(OUT, name), listing([name]), chunk.code);
  // The training run: a fresh node, so that nothing of this one's state is in
  // the caches; its message made by make-message beforehand, in another node,
  // so that make-message's code does not go into the pack's cache.
  let msg = Buffer.alloc(0);
  try {
    msg = execFileSync(join(ROOT, 'bin', 'make-message'), ['-r', 'alice@b.test', '--text', 'Hello\n', 'bob@b.test'], {
      env: { ...process.env, IMA_CONFIG_DIR: '/nonexistent', IMA_ALLOW_ROOT: '1' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
  } catch (e) {
    console.warn(`bundle: make-message for the training run failed (${e.message}); the caches cover module loading only`);
  }
  execFileSync(process.execPath, [fileURLToPath(import.meta.url), '--train'], { stdio: ['pipe', 'inherit', 'inherit'], input: msg });
}

/**
 * esbuild's CommonJS form of a chunk sets `module.exports = __toCommonJS(x)`:
 * a second object, with a getter for each getter __export put on x. Made at
 * every load of every chunk, that copy was 0.3-0.4 ms of a spawned stage's
 * start (CPU profile: __copyProps, __toCommonJS). x itself, marked as an
 * ES module, is the same exports. A chunk whose line differs is left as it
 * is, with a warning.
 */
function exportsInPlace(code, file) {
  const line = /^module\.exports = __toCommonJS\((\w+)\);$/m;
  if (!line.test(code)) {
    if (code.includes('__toCommonJS(')) console.warn(`bundle: ${file}: no "module.exports = __toCommonJS(...)" line to rewrite; left as it is`);
    return code;
  }
  return code.replace(line, 'module.exports = __defProp($1, "__esModule", { value: true });');
}

/**
 * esbuild reads a default or namespace import of a Node module through
 * __toESM(require(...)), which lists the module's keys at once, loading it
 * with the chunk. For the modules boot.cjs loads lazily (LAZY_BUILTINS) the
 * require() alone is kept: boot.cjs's stand-in answers `default` with the
 * module, as __toESM's object did. nodemailer's imports had every
 * mime-to-ima and ima-to-mime start load net, http, https and zlib (5 ms).
 */
function lazyBuiltinsUnwrapped(code) {
  const { LAZY_BUILTINS } = boot();
  return code.replace(/__toESM\(require\("(node:[a-z_]+)"\)\)/g, (call, id) => (LAZY_BUILTINS.has(id) ? `require("${id}")` : call));
}

/** Write a bundle file: its first line the sha256 of the rest, then `listing` (comment lines), then the code wrapped as boot.cjs runs it. */
function mark(file, listing, unwrapped) {
  const code = `${listing}${boot().wrap(unwrapped)}`;
  if (/[^\x00-\x7f]/.test(code.replace(/\/\/[^\n]*|\/\*[\s\S]*?\*\//g, ''))) {
    // boot.cjs reads the files as Latin-1; esbuild escapes all but comments.
    console.warn(`bundle: ${file} has non-ASCII code outside comments; check boot.ts's reading`);
  }
  const bytes = Buffer.from(code, 'utf8');
  const id = createHash('sha256').update(bytes).digest('hex');
  writeFileSync(file, Buffer.concat([Buffer.from(`//ima-build:${id}\n`, 'latin1'), bytes]));
}

/**
 * Load the entry, run what a spawned stage runs (a delivery, a routing), and
 * write the pack's cache: what V8 compiled of it is what a stage's start
 * calls. Then --help, every program and every chunk, and the other caches.
 * A chunk no run touched (a package only some runs import) is loaded so that
 * its cache holds at least its top level.
 */
async function train() {
  const { loadBundle, cacheHeader, CHECK_CACHE } = boot();
  const bundle = loadBundle(OUT, false);
  const { PROGRAMS, loadProgram } = bundle.core.exports;
  const msg = readFileSync(0);
  const saved = new Set();
  const save = (unit, file = `${unit.file}.cache`) => {
    if (saved.has(file)) return;
    saved.add(file);
    writeFileSync(file, Buffer.concat([Buffer.from(cacheHeader(unit.buildId), 'latin1'), unit.script.createCachedData()]));
    chmodSync(file, 0o444);
  };
  try {
    if (msg.length === 0) throw new Error('no message to deliver');
    // First a recipient check alone, for the pack's check cache (boot.ts, CHECK_CACHE): what it compiled and no more.
    await withScratch((dir, run) => run('handle-incoming-mail', ['--config', join(dir, 'him.toml'), '--check'], msg), loadProgram);
    save(bundle.units.get(PACK), join(OUT, CHECK_CACHE));
    await exercise(loadProgram, msg, false);
    save(bundle.units.get(PACK));
    await exercise(loadProgram, msg, true);
  } catch (e) {
    // The caches then hold the module bodies only: slower starts, same behaviour.
    console.warn(`bundle: training runs failed, caches cover module loading only: ${e.message}`);
  }
  for (const p of PROGRAMS) await loadProgram(p);
  for (const f of readdirSync(OUT)) if (f.endsWith('.cjs') && f !== 'boot.cjs') bundle.unit(f);
  for (const unit of bundle.units.values()) save(unit);
  process.exit(0);
}

/** A small MIME message for the training run's mime-to-ima. */
const MIME_SAMPLE = [
  'From: Alice <alice@b.test>',
  'To: bob@b.test',
  'Subject: Hello',
  'Date: Mon, 23 Nov 2026 10:00:00 +0000',
  'Message-ID: <training@b.test>',
  'MIME-Version: 1.0',
  'Content-Type: multipart/mixed; boundary="b"',
  '',
  '--b',
  'Content-Type: text/plain; charset=iso-8859-1',
  'Content-Transfer-Encoding: quoted-printable',
  '',
  'Gr=FC=DFe',
  '--b',
  'Content-Type: application/octet-stream; name="a.bin"',
  'Content-Disposition: attachment; filename="a.bin"',
  'Content-Transfer-Encoding: base64',
  '',
  'AAECAwQF',
  '--b--',
  '',
].join('\r\n');

/** The stages' usual runs, in a scratch directory: give-recipient --clean and a delivery, handle-incoming-mail --check and a delivery; or --help and a MIME conversion each way. */
async function exercise(loadProgram, msg, help) {
  await withScratch(async (dir, run) => {
    const box = join(dir, 'bob');
    const cfg = join(dir, 'him.toml');
    if (help) {
      // The other programs' usual first steps: --help (yargs), a MIME conversion each way.
      await run('give-recipient', ['--help']);
      await run('mime-to-ima', [], Buffer.from(MIME_SAMPLE));
      await run('ima-to-mime', [], msg);
      return;
    }
    await run('give-recipient', ['--clean', box]);
    await run('give-recipient', ['--address', 'bob@b.test', box], msg);
    await run('handle-incoming-mail', ['--config', cfg, '--check'], msg);
    await run('handle-incoming-mail', ['--config', cfg], msg);
  }, loadProgram);
}

/** Run `job` in a scratch directory holding a mailbox DIR/bob and DIR/him.toml routing bob@b.test to it; `run` runs a program in-process. */
async function withScratch(job, loadProgram) {
  const dir = mkdtempSync(join(tmpdir(), 'ima-train-'));
  try {
    const box = join(dir, 'bob');
    for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(box, f), { recursive: true });
    writeFileSync(
      join(dir, 'him.toml'),
      `[domains."b.test"]\ncommand = ["give-recipient", "--address", "{address}", ${JSON.stringify(box)}]\nusers = ["bob"]\n`,
    );
    const run = async (name, args, input) => {
      const stdout = new Writable({ write: (_c, _e, cb) => cb() });
      const stderr = new Writable({ write: (_c, _e, cb) => cb() });
      const env = { IMA_CONFIG_DIR: '/nonexistent', IMA_ALLOW_ROOT: '1', HOME: '/nonexistent', PATH: process.env.PATH };
      const code = await (await loadProgram(name))(args, { stdin: Readable.from(input ? [input] : []), stdout, stderr, env, cwd: dir });
      if (code !== 0) throw new Error(`training run ${name} ${args.join(' ')} exited ${code}`);
    };
    await job(dir, run);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await (process.argv[2] === '--train' ? train() : build());
