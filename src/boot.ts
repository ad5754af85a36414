// The launchers' loader (bin/NAME requires dist/bundle/boot.cjs, built from
// this file). A profile of a spawned stage's start put most of its time in
// Node's ESM loader and in compiling the bundle's chunks, every run anew.
// So the bundle is CommonJS files, compiled here with V8's code cache:
// ima.cjs (the runner and what the spawned stages run) and chunks
// (scripts/bundle.mjs), each read only when the code a program runs first
// requires it: a program pays for its own code and the packages it imports,
// not for every program's.
// Each NAME.cjs may have NAME.cjs.cache beside it, written by the build
// (scripts/bundle.mjs) and never at run time: its first line names the build
// (the sha256 the bundle's own first line carries), the Node version and the
// architecture it was made with; V8 itself checks its version, its flags and
// the source length. A cache that does not match, is older than its bundle
// file, or that V8 rejects is ignored and the file compiled from source, as
// Node would.
import { readFileSync, statSync } from 'node:fs';
import { createRequire, isBuiltin } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Script } from 'node:vm';

/** The first line of a bundle file: `//ima-build:` and the sha256 of the rest. */
export const BUILD_MARK = '//ima-build:';
const CACHE_MAGIC = 'ima-code-cache/1';

// The bundle's code runs as a CommonJS module body; __imaUrl stands for import.meta.url.
const HEAD = '(function (exports, require, module, __filename, __dirname, __imaUrl) {';
const TAIL = '\n})';

/**
 * A chunk's code as the function a bundle file holds (the build writes it
 * wrapped): the file's text is then the script's source as it is, one string,
 * not a second copy joined at run time (a heap snapshot of mime-to-ima held
 * each chunk's text twice, 1.9 MB).
 */
export function wrap(code: string): string {
  return HEAD + code + TAIL;
}

/**
 * The build a bundle file's code says it is, or undefined for a file without
 * the mark. A copy, not a slice: V8 keeps a slice's whole parent string alive.
 */
export function buildIdOf(code: string): string | undefined {
  if (!code.startsWith(BUILD_MARK)) return undefined;
  const end = code.indexOf('\n');
  return end < 0 ? undefined : Buffer.from(code.slice(BUILD_MARK.length, end), 'latin1').toString('latin1');
}

/** The first line of a cache file made for `buildId` by this Node. */
export function cacheHeader(buildId: string): string {
  return `${CACHE_MAGIC} ${buildId} ${process.version} ${process.arch}\n`;
}

/**
 * The code cache in `cacheFile` if it was made for this build and this Node,
 * else undefined. A bundle file changed after its cache was written (edited
 * by hand, keeping its first line) is newer than the cache: not used either.
 * An install from a package gives both files the same time; a build writes
 * the cache last.
 */
export function readCache(cacheFile: string, buildId: string | undefined, codeFile?: string): Buffer | undefined {
  if (!buildId) return undefined;
  let data: Buffer;
  try {
    if (codeFile && statSync(codeFile).mtimeMs > statSync(cacheFile).mtimeMs) return undefined;
    data = readFileSync(cacheFile);
  } catch {
    return undefined; // no cache: compile from source
  }
  const header = cacheHeader(buildId);
  if (data.length <= header.length || data.toString('latin1', 0, header.length) !== header) return undefined;
  return data.subarray(header.length);
}

export interface Unit {
  file: string;
  buildId: string | undefined;
  script: Script;
  /** A cache was offered and V8 took it. */
  cacheUsed: boolean;
  /** What the file's code assigned to module.exports (so far, while it runs). */
  readonly exports: Record<string, unknown>;
}

/**
 * Compile and run one bundle file. Latin-1 is exact here: esbuild writes
 * ASCII (it escapes everything else), and a one-byte string is the cheapest
 * V8 can compile. `loaded` is told of the unit before its code runs, so that
 * a require() of it from inside sees the module, as Node's loader does.
 */
export function loadUnit(file: string, req: (id: string) => unknown, useCache = true, loaded?: (u: Unit) => void, cacheFile = `${file}.cache`): Unit {
  const code = readFileSync(file, 'latin1');
  const buildId = buildIdOf(code);
  const own = `${file}.cache`;
  // A second cache (CHECK_CACHE) missing or stale: the file's own, as for any other start.
  const cachedData = useCache ? (readCache(cacheFile, buildId, file) ?? (cacheFile === own ? undefined : readCache(own, buildId, file))) : undefined;
  const script = new Script(code, { filename: file, cachedData });
  const module = { exports: {} as Record<string, unknown> };
  const unit: Unit = {
    file,
    buildId,
    script,
    cacheUsed: cachedData !== undefined && !script.cachedDataRejected,
    get exports() {
      return module.exports;
    },
  };
  loaded?.(unit);
  const body = script.runInThisContext() as (...a: unknown[]) => void;
  body(module.exports, req, module, file, join(file, '..'), pathToFileURL(file).href);
  return unit;
}

// Node modules the toolkit's code imports at its top level that many runs
// never use (child_process alone brings net and dgram; nodemailer imports
// net, http, https and zlib; heap.ts's v8, 2.4 ms to load, and perf_hooks
// serve only the long-running programs): loaded at the first touch of one
// of their exports. esbuild's CommonJS output reads an import's exports at
// each use (import_x.name), so a stand-in that forwards every access behaves
// as the module does. A default or namespace import esbuild wraps in
// __toESM(require(...)), which lists every key at once and so loads the
// module: the build leaves these modules unwrapped (scripts/bundle.mjs), and
// the stand-in's `default` is the module itself, as __toESM's was.
export const LAZY_BUILTINS: ReadonlySet<string> = new Set([
  'node:child_process',
  'node:crypto',
  'node:os',
  'node:net',
  'node:tls',
  'node:dns',
  'node:readline',
  'node:zlib',
  'node:http',
  'node:https',
  'node:perf_hooks',
  'node:v8',
]);

/** A stand-in for a module object that loads it when anything is asked of it; its `default` is the module. */
export function lazyModule(load: () => object): object {
  let real: object | undefined;
  const it = () => (real ??= load());
  return new Proxy(
    {},
    {
      get: (_t, k) => (k === 'default' ? it() : Reflect.get(it(), k)),
      has: (_t, k) => Reflect.has(it(), k),
      ownKeys: () => Reflect.ownKeys(it()),
      getOwnPropertyDescriptor: (_t, k) => {
        const d = Reflect.getOwnPropertyDescriptor(it(), k);
        return d && { ...d, configurable: true };
      },
      set: (_t, k, v) => Reflect.set(it(), k, v),
    },
  );
}

/** The loaded bundle of a directory: ima.cjs now, each chunk when code first requires it. */
export interface Bundle {
  /** The entry, main.cjs: the runner and the program registry. */
  core: Unit;
  /** The chunks run so far, by name; a chunk from a pack has the pack's file, script and cache. */
  units: Map<string, Unit>;
  /** Load a chunk (by file name) if it is not yet. */
  unit(name: string): Unit;
}

type Body = (exports: object, require: (id: string) => unknown, module: { exports: object }, filename: string, dirname: string, url: string) => void;

/**
 * The pack's second cache, for a recipient check (handle-incoming-mail
 * --check: an MTA may start one per recipient). A cache holds what its
 * training run compiled, and V8 deserializes all of it at every start: the
 * pack's cache, trained on deliveries too, is 264 KB, of which a check uses
 * 198 KB. A check that deserialized only those started 0.7-1.0 ms sooner
 * (about 3%); a delivery that did took 2.1 ms longer, compiling the rest
 * itself. So the build trains two caches (scripts/bundle.mjs) and a start
 * whose arguments ask for a check takes this one. Choosing wrongly costs
 * time, never behaviour: V8 compiles whatever a cache lacks.
 */
export const CHECK_CACHE = 'ima.cjs.check.cache';

/** The pack's cache for a start with these arguments. */
export function packCacheFor(args: readonly string[]): string {
  return args.includes('--check') ? CHECK_CACHE : 'ima.cjs.cache';
}

/**
 * A bundle file is a chunk (a CommonJS body) or a pack: a file whose body
 * sets module.exports.__imaPack to the bodies of several chunks, by name,
 * each run when first required, as if it were its own file. `packCache`:
 * the pack's cache file (by name in dir), falling back to ima.cjs.cache.
 */
export function loadBundle(dir: string, useCache = true, packCache = 'ima.cjs.cache'): Bundle {
  const nodeRequire = createRequire(join(dir, 'ima.cjs'));
  const units = new Map<string, Unit>();
  const packed = new Map<string, { body: Body; pack: Unit }>();
  // A chunk requires Node's modules, other chunks ("./NAME.cjs") and, for
  // what the build leaves outside (lazy.ts's real html-to-text), packages.
  const chunkRequire = (id: string): unknown => {
    if (isBuiltin(id)) return LAZY_BUILTINS.has(id) ? lazyModule(() => nodeRequire(id) as object) : nodeRequire(id);
    if (id.startsWith('./') && !id.includes('/', 2)) return unit(id.slice(2)).exports;
    return nodeRequire(id);
  };
  const fromPack = (name: string, { body, pack }: { body: Body; pack: Unit }): Unit => {
    const module = { exports: {} as Record<string, unknown> };
    const u: Unit = { ...pack, exports: module.exports };
    Object.defineProperty(u, 'exports', { get: () => module.exports });
    units.set(name, u);
    const file = join(dir, name);
    body(module.exports, chunkRequire, module, file, dir, pathToFileURL(file).href);
    return u;
  };
  const unit = (name: string): Unit => {
    const known = units.get(name);
    if (known) return known;
    const inPack = packed.get(name);
    if (inPack) return fromPack(name, inPack);
    const u = loadUnit(
      join(dir, name),
      chunkRequire,
      useCache,
      (v) => {
        units.set(name, v);
      },
      name === 'ima.cjs' ? join(dir, packCache) : undefined,
    );
    const bodies = u.exports.__imaPack as Record<string, Body> | undefined;
    for (const [n, body] of Object.entries(bodies ?? {})) packed.set(n, { body, pack: u });
    return u;
  };
  unit('ima.cjs');
  return { core: unit('main.cjs'), units, unit };
}

/** What bin/NAME calls: run the program as this process (run.ts launch()). */
export function launch(program: string): void {
  const { core } = loadBundle(__dirname, true, packCacheFor(process.argv.slice(2)));
  (core.exports.launch as (p: string) => void)(program);
}
