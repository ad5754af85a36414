// The command-line conventions every program shares: yargs with --help and
// --version, --config/--check-config, --verbose/--quiet; usage errors on
// stderr with exit 64; the config loaded and a log made. Programs call
// start() and get either everything they need or an exit code.
import { createReadStream, fstatSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Readable } from 'node:stream';
import type { ArgumentsCamelCase, Argv } from 'yargs';
// yargs' own lightweight parser (what yargs/helpers re-exports as Parser), imported
// directly: yargs/helpers also loads cliui and y18n at start.
import Parser from 'yargs-parser';
import { EXIT, Failure, noInput } from './failure.js';
import { type Field, type Located, type Role, deepFreeze, loadConfig, locateConfig, showConfig } from './config.js';
import { LOG_FORMATS, type Log, type LogFormat, createLog, logLine, oneLine } from './log.js';
import type { Io } from './io.js';
import { refuseRoot } from './privileges.js';

export interface CommonFlags {
  config?: string;
  checkConfig?: boolean;
  verbose?: boolean;
  quiet?: boolean;
  logFormat?: LogFormat;
  _: (string | number)[];
}

let version: string | undefined;
function packageVersion(): string {
  version ??= (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  return version;
}

export interface Started<A, C, P = undefined> {
  argv: ArgumentsCamelCase<A> & CommonFlags;
  config: C;
  source: Located;
  log: Log;
  /** What the spec's check made of the config (certificates loaded, routing table built). */
  prepared: P;
}

export interface ProgramSpec<A, C, P = undefined> {
  name: string;
  role: Role;
  usage: string;
  schema: Field<C>;
  options: (y: Argv) => Argv<A>;
  /** Refuse to run as root (exit 77) unless IMA_ALLOW_ROOT=1 or the config names a `user` to become. */
  notAsRoot?: boolean;
  /**
   * Every check a start runs beyond the schema (files, certificates, commands,
   * the routing table): run by --check-config and by every start alike, so
   * "configuration OK" means the program would start. Throws a Failure.
   */
  check?: (config: C, source: Located, io: Io) => P;
}

/** What parsing the command line needs of a spec. */
type FlagSpec<A> = Pick<ProgramSpec<A, unknown>, 'name' | 'usage' | 'options'>;

/** Parse flags, load config, make the log. Returns a number when the program is already done (help, errors). */
export async function start<A, C, P = undefined>(spec: ProgramSpec<A, C, P>, args: string[], io: Io): Promise<Started<A, C, P> | number> {
  const parsed = await parseFlags(spec, args, io);
  if (typeof parsed === 'number') return parsed;
  const argv = parsed;
  // io.stderr at the first line logged: a run that logs nothing does not make process.stderr (for a pipe, most of a millisecond).
  const log = createLog(() => io.stderr, spec.name, argv.verbose ? 'debug' : argv.quiet ? 'error' : 'info', argv.logFormat);
  let loaded;
  let prepared: P;
  try {
    const where = locateConfig(spec.name, spec.role, argv.config, io.env, io.cwd);
    loaded = loadConfig(spec.schema, where.path, where.required);
    prepared = checked(spec, loaded.config, loaded.source, io);
  } catch (e) {
    if (e instanceof Failure) {
      io.stderr.write(logLine(spec.name, 'error', e.message, argv.logFormat));
      return e.exitCode;
    }
    throw e;
  }
  if (argv.checkConfig) {
    io.stdout.write(`# ${loaded.source.file ?? 'no config file: defaults'}\n${showConfig(loaded.config)}`);
    io.stderr.write(`${spec.name}: configuration OK\n`);
    return EXIT.OK;
  }
  if (spec.notAsRoot) refuseRoot(io.env, (loaded.config as { user?: string }).user);
  return { argv, config: loaded.config, source: loaded.source, log, prepared };
}

// A parsed config is one frozen object while its file is unchanged, so an
// in-process run per message checks it once, not once per message.
const checks = new WeakMap<object, { cwd: string; prepared: unknown }>();

function checked<A, C, P>(spec: ProgramSpec<A, C, P>, config: C, source: Located, io: Io): P {
  if (!spec.check) return undefined as P;
  const known = checks.get(config as object);
  if (known && known.cwd === io.cwd) return known.prepared as P;
  const prepared = spec.check(config, source, io);
  checks.set(config as object, { cwd: io.cwd, prepared });
  return prepared;
}

// Building a parser costs about a millisecond; a server running a program
// in-process for every message reuses one (yargs resets between parses).
const parsers = new Map<string, Argv<unknown>>();

async function parserFor<A>(spec: FlagSpec<A>, width: number): Promise<Argv<A>> {
  const key = `${spec.name}\0${width}`;
  let y = parsers.get(key) as Argv<A> | undefined;
  if (!y) {
    y = buildParser((await import('yargs')).default, spec, width);
    parsers.set(key, y as Argv<unknown>);
  }
  return y;
}

function buildParser<A>(yargs: () => Argv, spec: FlagSpec<A>, width: number): Argv<A> {
  return spec
    .options(
      yargs()
        .scriptName(spec.name)
        .usage(spec.usage)
        .exitProcess(false)
        .strictOptions()
        .parserConfiguration({ 'camel-case-expansion': true, 'strip-dashed': true })
        .option('config', { type: 'string', describe: 'Config file (default: see FILES in the man page)', requiresArg: true })
        .option('check-config', { type: 'boolean', describe: 'Print the effective config, check it, and exit' })
        .option('verbose', { type: 'boolean', describe: 'Log more (debug level)' })
        .option('quiet', { type: 'boolean', describe: 'Log errors only' })
        .option('log-format', { choices: LOG_FORMATS, describe: 'Diagnostics as text lines or one JSON object per line', requiresArg: true }),
    )
    .version(packageVersion())
    .help()
    .alias('help', 'h')
    .wrap(width);
}

// In-process runs repeat the same few argument lists (a route's argv for
// each message): a successful parse is a pure function of them, kept frozen.
const parsed = new Map<string, unknown>();

/** Parse a command line; `quick = false` skips the yargs-parser path (tests compare the two). */
export async function parseFlags<A>(spec: FlagSpec<A>, args: string[], io: Io, quick = true): Promise<(ArgumentsCamelCase<A> & CommonFlags) | number> {
  const key = `${spec.name}\0${args.join('\0')}`;
  const cached = parsed.get(key);
  if (cached) return cached as ArgumentsCamelCase<A> & CommonFlags;
  const known = quick ? quickParse(spec, args) : undefined;
  const twice = known && givenTwice(spec, known as Record<string, unknown>);
  if (twice) return usage(spec.name, io, `--${twice} given more than once`);
  if (known) {
    if (parsed.size >= 256) parsed.clear();
    parsed.set(key, known);
    return known as ArgumentsCamelCase<A> & CommonFlags;
  }
  const y = await parserFor(spec, Math.min(100, (io.stdout as { columns?: number }).columns ?? 80));
  return new Promise((resolveFlags, rejectFlags) => {
    // The answer comes through the callback; parse() also returns the parse (a promise only with async middleware, which we have none of).
    const result = y.parse(args, {}, (err, argv, output) => {
      if (err) return resolveFlags(usage(spec.name, io, err.message));
      const a = argv as Record<string, unknown>;
      if (a.help || a.version) {
        io.stdout.write(`${output}\n`);
        return resolveFlags(EXIT.OK);
      }
      const twice = givenTwice(spec, a);
      if (twice) return resolveFlags(usage(spec.name, io, `--${twice} given more than once`));
      if (parsed.size >= 256) parsed.clear();
      parsed.set(key, deepFreeze(argv));
      resolveFlags(argv as unknown as ArgumentsCamelCase<A> & CommonFlags);
    });
    if (result instanceof Promise) result.catch(rejectFlags);
  });
}

// Start-up: loading full yargs (with cliui, its help and validation) is
// about a third of a program's start. The usual command line (known flags,
// no --help or --version, nothing wrong) is parsed by yargs-parser alone
// (yargs/helpers) with the same options and configuration; anything else
// goes to full yargs, so help, version and every error read as before.

interface OptionDef {
  alias?: string | string[];
  type?: 'string' | 'boolean' | 'number';
  default?: unknown;
  requiresArg?: boolean;
  describe?: string;
}

interface Recorded {
  options: Map<string, OptionDef>;
  conflicts: [string, string][];
  /** The program used a yargs feature the quick path does not know: always use full yargs. */
  unknownUse: boolean;
}

const COMMON: [string, OptionDef][] = [
  ['config', { type: 'string', requiresArg: true }],
  ['check-config', { type: 'boolean' }],
  ['verbose', { type: 'boolean' }],
  ['quiet', { type: 'boolean' }],
];

const recordings = new Map<string, Recorded>();

function usage(name: string, io: Io, problem: string): number {
  io.stderr.write(`${name}: ${oneLine(problem)}\nTry '${name} --help' for more information.\n`);
  return EXIT.USAGE;
}

/**
 * An option given more than once that its help does not call repeatable
 * (yargs makes a list of it, which a program expecting one value would take
 * for something else: smtp-send -f a -f b failed as an internal error, exit
 * 75, so its caller retried forever). A flag given twice is harmless.
 */
function givenTwice(spec: FlagSpec<unknown>, argv: Record<string, unknown>): string | undefined {
  for (const [name, d] of record(spec).options) {
    if (d.type !== 'boolean' && !/\brepeatable\b/.test(d.describe ?? '') && Array.isArray(argv[camel(name)])) return name;
  }
  return undefined;
}

/** The options a program declares, recorded by running its options() on a stand-in for yargs. */
function record(spec: FlagSpec<unknown>): Recorded {
  let r = recordings.get(spec.name);
  if (r) return r;
  const rec: Recorded = { options: new Map(COMMON), conflicts: [], unknownUse: false };
  const stand: Argv = new Proxy({} as Argv, {
    get:
      (_t, method) =>
      (...a: unknown[]) => {
        if (method === 'option' && typeof a[0] === 'string') rec.options.set(a[0], a[1] as OptionDef);
        else if (method === 'conflicts' && typeof a[0] === 'string' && typeof a[1] === 'string') rec.conflicts.push([a[0], a[1]]);
        else rec.unknownUse = true;
        return stand;
      },
  });
  spec.options(stand);
  recordings.set(spec.name, (r = rec));
  return r;
}

const camel = (s: string) => s.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());

/** Parse with yargs-parser when the command line is plainly valid; undefined means "ask full yargs". */
export function quickParse(spec: FlagSpec<unknown>, args: string[]): (ArgumentsCamelCase<unknown> & CommonFlags) | undefined {
  const rec = record(spec);
  // '--' too: yargs turns numbers after it into numbers, yargs-parser does not.
  if (rec.unknownUse || args.some((a) => a === '--' || /^-(h|-help|-version)(=|$)/.test(a))) return undefined;
  const opts = [...rec.options];
  const names = (t: string) => opts.filter(([, d]) => d.type === t).map(([n]) => n);
  const alias = Object.fromEntries(opts.filter(([, d]) => d.alias !== undefined).map(([n, d]) => [n, ([] as string[]).concat(d.alias!)]));
  const defaults = Object.fromEntries(opts.filter(([, d]) => d.default !== undefined).map(([n, d]) => [n, d.default]));
  const out = Parser.detailed(args, {
    boolean: names('boolean'),
    string: names('string'),
    number: names('number'),
    alias,
    default: defaults,
    configuration: { 'camel-case-expansion': true, 'strip-dashed': true },
  });
  if (out.error) return undefined;
  const argv = out.argv as Record<string, unknown> & CommonFlags;
  const known = new Set(['_', '--']);
  for (const [n, d] of opts) for (const k of [n, ...([] as string[]).concat(d.alias ?? [])]) known.add(k).add(camel(k));
  for (const k of Object.keys(argv)) if (!known.has(k)) return undefined; // strictOptions: yargs names it
  for (const [n, d] of opts) {
    const v = argv[camel(n)];
    // requiresArg: a flag without its value is yargs' error to word.
    if (d.requiresArg && v !== undefined && [v].flat().some((x) => x === '' || x === undefined)) return undefined;
    if (d.type === 'number' && v !== undefined && [v].flat().some((x) => typeof x !== 'number' || Number.isNaN(x))) return undefined;
  }
  const given = (n: string) => argv[camel(n)] !== undefined && !(n in defaults && argv[camel(n)] === defaults[n]);
  if (rec.conflicts.some(([a, b]) => given(a) && given(b))) return undefined;
  return deepFreeze({ ...argv, $0: spec.name }) as unknown as ArgumentsCamelCase<unknown> & CommonFlags;
}

/** A message to read: the file named on the command line (opened now, so a missing one fails before anything is written), or stdin. */
export async function openInput(file: string | undefined, io: Io): Promise<Readable> {
  if (!file) return io.stdin;
  // 256 KiB reads, not createReadStream's 64: a quarter of the chunks, and
  // each buffer an mmap (launchers fix glibc's threshold at 128 KiB) given
  // back when freed. send-mail's own 64 KiB reader held 110-127 MB at its
  // peak sending 1 GiB; with this one, 90-94 MB.
  const input = createReadStream(resolve(io.cwd, file), { highWaterMark: 256 * 1024 });
  await new Promise<void>((res, rej) => {
    // A directory opens; only its first read fails (EISDIR), which would be taken for trouble worth retrying.
    input.once('open', (fd: number) => (fstatSync(fd).isDirectory() ? rej(noInput(file, 'is a directory')) : res()));
    input.once('error', (e: NodeJS.ErrnoException) => rej(noInput(file, e.code === 'ENOENT' ? 'no such file' : `cannot read (${e.code})`)));
  }).catch((e: unknown) => {
    input.destroy();
    throw e;
  });
  return input;
}
