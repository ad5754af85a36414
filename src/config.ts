// One config loader for every program: typed defaults, then the TOML file,
// then command-line flags; validated once and frozen. A bad file names the
// file, the key and the problem, and exits 78 (EX_CONFIG).
import { readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { parse as parseToml, stringify as stringifyToml } from 'smol-toml';
import { configError } from './failure.js';

/** A validator for one value; `key` is the dotted path used in error messages. */
export interface Field<T> {
  parse(value: unknown, key: string): T;
  /** Value used when the key is absent; undefined means the key is required. */
  fallback?: () => T;
}

export class ConfigProblem extends Error {
  constructor(
    readonly key: string,
    problem: string,
  ) {
    super(problem);
  }
}
const problem = (key: string, msg: string) => new ConfigProblem(key, msg);

function typeName(v: unknown): string {
  if (Array.isArray(v)) return 'a list';
  if (v === null || v === undefined) return 'nothing';
  if (typeof v === 'object') return v instanceof Date ? 'a date' : 'a table';
  return `a ${typeof v}`;
}

export function optional<T, D extends T | undefined>(field: Field<T>, value: D): Field<T | D> {
  return { parse: field.parse, fallback: () => value };
}

export const string = (opts: { nonEmpty?: boolean; oneOf?: readonly string[]; check?: (s: string) => string | undefined } = {}): Field<string> => ({
  parse(v, key) {
    if (typeof v !== 'string') throw problem(key, `must be a string, not ${typeName(v)}`);
    if (opts.nonEmpty && v === '') throw problem(key, 'must not be empty');
    if (opts.oneOf && !opts.oneOf.includes(v)) throw problem(key, `must be one of ${opts.oneOf.join(', ')}, not "${v}"`);
    const bad = opts.check?.(v);
    if (bad) throw problem(key, bad);
    return v;
  },
});

export const integer = (opts: { min?: number; max?: number } = {}): Field<number> => ({
  parse(v, key) {
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw problem(key, `must be a whole number, not ${typeName(v)}`);
    if (opts.min !== undefined && v < opts.min) throw problem(key, `must be at least ${opts.min}`);
    if (opts.max !== undefined && v > opts.max) throw problem(key, `must be at most ${opts.max}`);
    return v;
  },
});

export const boolean = (): Field<boolean> => ({
  parse(v, key) {
    if (typeof v !== 'boolean') throw problem(key, `must be true or false, not ${typeName(v)}`);
    return v;
  },
});

const SIZE_UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };
/** A byte count: 1048576, "512K", "25M", "2G". */
export function parseSize(v: unknown): number | undefined {
  if (typeof v === 'number') return Number.isSafeInteger(v) && v >= 0 ? v : undefined;
  if (typeof v !== 'string') return undefined;
  const m = /^(\d+)\s*([kmg]?)i?b?$/i.exec(v.trim());
  if (!m) return undefined;
  const n = Number(m[1]) * SIZE_UNITS[m[2].toLowerCase()];
  return Number.isSafeInteger(n) ? n : undefined;
}
export const size = (opts: { min?: number; max?: number } = {}): Field<number> => ({
  parse(v, key) {
    const n = parseSize(v);
    if (n === undefined) throw problem(key, `must be a size such as 1048576, "512K", "25M" or "1G"`);
    if (opts.min !== undefined && n < opts.min) throw problem(key, `must be at least ${opts.min} bytes`);
    if (opts.max !== undefined && n > opts.max) throw problem(key, `must be at most ${opts.max} bytes`);
    return n;
  },
});

const TIME_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
/** A duration in milliseconds: 30 (seconds), "500ms", "30s", "5m", "1h". */
export function parseDuration(v: unknown): number | undefined {
  if (typeof v === 'number') return Number.isFinite(v) && v >= 0 ? Math.round(v * 1000) : undefined;
  if (typeof v !== 'string') return undefined;
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)$/.exec(v.trim());
  return m ? Math.round(Number(m[1]) * TIME_UNITS[m[2]]) : undefined;
}
/** The longest a Node.js timer waits (2^31-1 ms, 24.8 days): a longer one fires at once, with only a warning. */
export const MAX_TIMER = 2 ** 31 - 1;
/**
 * A duration field. 0 is refused (a zero timeout would fail everything at
 * once) unless `zero` says what 0 means for this key ("no delay"). Longer
 * than a timer can wait is refused too: a 600h timeout would kill every
 * stage at once and a 600h sleep would never sleep. `timer: false` lifts
 * that for a key only ever compared with ages (a lifetime), never waited.
 */
export const duration = (opts: { zero?: string; timer?: false } = {}): Field<number> => ({
  parse(v, key) {
    const n = parseDuration(v);
    if (n === undefined) throw problem(key, `must be a duration such as 30 (seconds), "500ms", "30s" or "5m"`);
    if (n === 0 && !opts.zero) throw problem(key, 'must be more than 0');
    if (n > MAX_TIMER && opts.timer !== false) throw problem(key, `must be at most ${MAX_TIMER}ms (about "596h", 24.8 days: the longest a timer waits)`);
    return n;
  },
});

export function list<T>(item: Field<T>, opts: { nonEmpty?: boolean } = {}): Field<T[]> {
  return {
    parse(v, key) {
      if (!Array.isArray(v)) throw problem(key, `must be a list, not ${typeName(v)}`);
      if (opts.nonEmpty && v.length === 0) throw problem(key, 'must not be empty');
      return v.map((x, i) => item.parse(x, `${key}[${i}]`));
    },
  };
}

/** An argv array: a command and its arguments, never a shell string. */
export const command = (): Field<string[]> => ({
  parse(v, key) {
    if (typeof v === 'string') throw problem(key, 'must be a list such as ["give-recipient", "{address}"], not a shell string');
    return list(string({ nonEmpty: true }), { nonEmpty: true }).parse(v, key);
  },
});

type Shape = Record<string, Field<unknown>>;
export type Parsed<S extends Shape> = { [K in keyof S]: S[K] extends Field<infer T> ? T : never };

const quoteKey = (k: string) => (/^[A-Za-z0-9_-]+$/.test(k) ? k : JSON.stringify(k));
const join2 = (key: string, k: string) => (key ? `${key}.${quoteKey(k)}` : quoteKey(k));

function isTable(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

/** A table with known keys; unknown keys are an error (a typo must not be silently ignored). */
export function table<S extends Shape>(shape: S): Field<Parsed<S>> {
  const parse = (v: unknown, key: string) => {
    if (!isTable(v)) throw problem(key, `must be a table, not ${typeName(v)}`);
    for (const k of Object.keys(v)) if (!(k in shape)) throw problem(join2(key, k), 'unknown key');
    const out: Record<string, unknown> = {};
    for (const [k, field] of Object.entries(shape)) {
      if (v[k] === undefined) {
        if (!field.fallback) throw problem(join2(key, k), 'is required');
        out[k] = field.fallback();
      } else out[k] = field.parse(v[k], join2(key, k));
    }
    return out as Parsed<S>;
  };
  return { parse, fallback: () => parse({}, '') };
}

/** A table whose keys are names the user chooses (users, domains, routes). */
export function map<T>(item: Field<T>, keyCheck?: (k: string) => string | undefined): Field<Record<string, T>> {
  return {
    parse(v, key) {
      if (!isTable(v)) throw problem(key, `must be a table, not ${typeName(v)}`);
      const out: Record<string, T> = Object.create(null);
      for (const [k, x] of Object.entries(v)) {
        const bad = keyCheck?.(k);
        if (bad) throw problem(join2(key, k), bad);
        out[k] = item.parse(x, join2(key, k));
      }
      return out;
    },
    fallback: () => Object.create(null),
  };
}

/**
 * A table keyed by domain, keyed the way domains are compared (ASCII,
 * lowercase: `ascii`): "B.Test" or an international name as written would
 * otherwise never match the domain of an address. Two keys naming one
 * domain are refused, as which of them holds would be a guess.
 */
export function domainMap<T>(item: Field<T>, ascii: (domain: string) => string): Field<Record<string, T>> {
  return {
    parse(v, key) {
      if (!isTable(v)) throw problem(key, `must be a table, not ${typeName(v)}`);
      const out: Record<string, T> = Object.create(null);
      const written = new Map<string, string>();
      for (const [k, x] of Object.entries(v)) {
        let domain: string;
        try {
          domain = ascii(k);
        } catch (e) {
          throw problem(join2(key, k), (e as Error).message);
        }
        const other = written.get(domain);
        if (other !== undefined) throw problem(join2(key, k), `names the same domain as ${join2(key, other)} (${domain})`);
        written.set(domain, k);
        out[domain] = item.parse(x, join2(key, k));
      }
      return out;
    },
    fallback: () => Object.create(null),
  };
}

export type Role = 'server' | 'user';

export interface Located {
  /** The file read, or undefined when no file exists and defaults apply. */
  file?: string;
  /** The file's directory: relative paths inside the config are resolved against it. */
  dir: string;
}

/** Where a program's config lives: --config, then $IMA_CONFIG_DIR, then /etc/ima or ~/.config/ima. */
export function locateConfig(
  program: string,
  role: Role,
  explicit: string | undefined,
  env: Record<string, string | undefined>,
  cwd: string,
): { path: string; required: boolean } {
  if (explicit) return { path: resolve(cwd, explicit), required: true };
  if (env.IMA_CONFIG_DIR) return { path: join(resolve(cwd, env.IMA_CONFIG_DIR), `${program}.toml`), required: false };
  if (role === 'server') return { path: `/etc/ima/${program}.toml`, required: false };
  const base = env.XDG_CONFIG_HOME || join(env.HOME || homedir(), '.config');
  return { path: join(base, 'ima', `${program}.toml`), required: false };
}

// A server running a program in-process loads its config for every message.
// An edit is seen at the next run, as when spawned; but the parsed, frozen
// result is reused while the file is unchanged: while its stat(2) (inode,
// size, times) is the same, for a file that had not been touched for a while
// when it was read: file times are coarse (a clock tick, 1-10 ms), so a file
// edited twice within a tick at the same size keeps its stat; one younger
// than SETTLED_MS is read each time, and its text compared.
const loaded = new WeakMap<Field<unknown>, Map<string, { text: string; stamp?: string; result: { config: unknown; source: Located } }>>();

/** How long a file must have been left alone before its stat alone vouches for its contents. */
const SETTLED_MS = 250;

function stampOf(path: string): { stamp: string; settled: boolean } | undefined {
  const st = statSync(path, { throwIfNoEntry: false });
  if (!st) return undefined;
  const settled = Date.now() - Math.max(st.mtimeMs, st.ctimeMs) > SETTLED_MS;
  return { stamp: `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`, settled };
}

/** The defaults of a schema, for a config file that is not there (made once per schema and path). */
const absent = new WeakMap<Field<unknown>, Map<string, { config: unknown; source: Located }>>();

function defaultsFor<T>(schema: Field<T>, path: string): { config: T; source: Located } {
  let known = absent.get(schema);
  if (!known) absent.set(schema, (known = new Map()));
  let result = known.get(path);
  if (!result) {
    if (known.size >= 64) known.clear();
    known.set(path, (result = { config: deepFreeze(parseWith(schema, {}, path)), source: Object.freeze({ dir: resolve(path, '..') }) }));
  }
  return result as { config: T; source: Located };
}

/** Read, parse and validate a config file; a missing optional file gives the defaults. */
export function loadConfig<T>(schema: Field<T>, path: string, required: boolean): { config: T; source: Located } {
  let known = loaded.get(schema);
  const hit = known?.get(path);
  const stat = stampOf(path);
  if (hit?.stamp !== undefined && hit.stamp === stat?.stamp) return hit.result as { config: T; source: Located };
  // No file where an optional one may be (give-recipient run by a server, most often): its stat said so,
  // without a read that fails with an exception per message.
  if (!stat && !required) return defaultsFor(schema, path);
  let text: string | undefined;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT' && !required) return defaultsFor(schema, path);
    throw configError(path, '', err.code === 'ENOENT' ? 'no such file' : `cannot read: ${err.code ?? err.message}`);
  }
  // The stat taken before the read: a change after it shows in the next one.
  const stamp = stat?.settled ? stat.stamp : undefined;
  if (hit && hit.text === text) {
    hit.stamp = stamp;
    return hit.result as { config: T; source: Located };
  }
  const result = parseConfig(schema, path, text);
  if (!known) loaded.set(schema, (known = new Map()));
  if (known.size >= 64) known.clear();
  known.set(path, { text, stamp, result });
  return result;
}

function parseConfig<T>(schema: Field<T>, path: string, text: string): { config: T; source: Located } {
  let data: unknown;
  try {
    data = parseToml(text);
  } catch (e) {
    const err = e as Error & { line?: number; column?: number };
    const where = err.line ? `line ${err.line}` : '';
    throw configError(path, where, `not valid TOML: ${err.message.split('\n')[0]}`);
  }
  return { config: deepFreeze(parseWith(schema, data, path)), source: Object.freeze({ file: path, dir: resolve(path, '..') }) };
}

function parseWith<T>(schema: Field<T>, data: unknown, path: string): T {
  try {
    return schema.parse(data, '');
  } catch (e) {
    if (e instanceof ConfigProblem) throw configError(path, e.key, e.message);
    throw e;
  }
}

/**
 * A mailbox path or template: no ".." component, so a template filled with a
 * recipient's parts, or an edited entry, can never point outside the tree
 * the operator meant. `absolute`: relative paths refused too (a server's
 * working directory is nobody's choice).
 */
export function mailboxPathProblem(p: string, absolute: boolean): string | undefined {
  if (p.split('/').includes('..')) return 'must not contain ".." (name the directory itself)';
  if (absolute && !isAbsolute(p)) return 'must be an absolute path';
  return undefined;
}

/** Resolve a path from the config relative to the config file's directory. */
export function configPath(source: Located, p: string): string {
  return isAbsolute(p) ? p : resolve(source.dir, p);
}

export function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v)) deepFreeze(x);
  }
  return v;
}

/** The effective config as TOML, for --check-config. */
export function showConfig(config: unknown): string {
  return stringifyToml(config as Record<string, unknown>);
}
