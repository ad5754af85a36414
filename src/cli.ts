// The command-line conventions every program shares: yargs with --help and
// --version, --config/--check-config, --verbose/--quiet; usage errors on
// stderr with exit 64; the config loaded and a log made. Programs call
// start() and get either everything they need or an exit code.
import { createReadStream, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Readable } from 'node:stream';
import yargs, { type ArgumentsCamelCase, type Argv } from 'yargs';
import { EXIT, Failure, noInput } from './failure.js';
import { type Field, type Located, type Role, deepFreeze, loadConfig, locateConfig, showConfig } from './config.js';
import { type Log, createLog, oneLine } from './log.js';
import type { Io } from './io.js';
import { refuseRoot } from './privileges.js';

export interface CommonFlags {
  config?: string;
  checkConfig?: boolean;
  verbose?: boolean;
  quiet?: boolean;
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
  let loaded;
  let prepared: P;
  try {
    const where = locateConfig(spec.name, spec.role, argv.config, io.env, io.cwd);
    loaded = loadConfig(spec.schema, where.path, where.required);
    prepared = checked(spec, loaded.config, loaded.source, io);
  } catch (e) {
    if (e instanceof Failure) {
      io.stderr.write(`${spec.name}: ${oneLine(e.message)}\n`);
      return e.exitCode;
    }
    throw e;
  }
  const log = createLog(io.stderr, spec.name, argv.verbose ? 'debug' : argv.quiet ? 'error' : 'info');
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

function parserFor<A>(spec: FlagSpec<A>, width: number): Argv<A> {
  const key = `${spec.name}\0${width}`;
  let y = parsers.get(key) as Argv<A> | undefined;
  if (!y) {
    y = buildParser(spec, width);
    parsers.set(key, y as Argv<unknown>);
  }
  return y;
}

function buildParser<A>(spec: FlagSpec<A>, width: number): Argv<A> {
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
        .option('quiet', { type: 'boolean', describe: 'Log errors only' }),
    )
    .version(packageVersion())
    .help()
    .alias('help', 'h')
    .wrap(width);
}

// In-process runs repeat the same few argument lists (a route's argv for
// each message): a successful parse is a pure function of them, kept frozen.
const parsed = new Map<string, unknown>();

async function parseFlags<A>(spec: FlagSpec<A>, args: string[], io: Io): Promise<(ArgumentsCamelCase<A> & CommonFlags) | number> {
  const key = `${spec.name}\0${args.join('\0')}`;
  const known = parsed.get(key);
  if (known) return known as ArgumentsCamelCase<A> & CommonFlags;
  const y = parserFor(spec, Math.min(100, (io.stdout as { columns?: number }).columns ?? 80));
  return new Promise((resolveFlags, rejectFlags) => {
    // The answer comes through the callback; parse() also returns the parse (a promise only with async middleware, which we have none of).
    const result = y.parse(args, {}, (err, argv, output) => {
      if (err) {
        io.stderr.write(`${spec.name}: ${oneLine(err.message)}\nTry '${spec.name} --help' for more information.\n`);
        return resolveFlags(EXIT.USAGE);
      }
      const a = argv as Record<string, unknown>;
      if (a.help || a.version) {
        io.stdout.write(`${output}\n`);
        return resolveFlags(EXIT.OK);
      }
      if (parsed.size >= 256) parsed.clear();
      parsed.set(key, deepFreeze(argv));
      resolveFlags(argv as unknown as ArgumentsCamelCase<A> & CommonFlags);
    });
    if (result instanceof Promise) result.catch(rejectFlags);
  });
}

/** A message to read: the file named on the command line (opened now, so a missing one fails before anything is written), or stdin. */
export async function openInput(file: string | undefined, io: Io): Promise<Readable> {
  if (!file) return io.stdin;
  const input = createReadStream(resolve(io.cwd, file), { highWaterMark: 256 * 1024 });
  await new Promise<void>((res, rej) => {
    input.once('open', () => res());
    input.once('error', (e: NodeJS.ErrnoException) => rej(noInput(file, e.code === 'ENOENT' ? 'no such file' : `cannot read (${e.code})`)));
  });
  return input;
}
