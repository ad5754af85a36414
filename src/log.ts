// Diagnostics on stderr, one line per event: "program: message", or with
// --log-format json one JSON object per line with the same content (program,
// level, msg) plus the time and every key=value pair of the message as its
// own field, for log collectors. Never stdout: that belongs to the next
// stage of the pipeline.
import type { Writable } from 'node:stream';

export type Level = 'error' | 'warn' | 'info' | 'debug';
export const LEVELS: readonly Level[] = ['error', 'warn', 'info', 'debug'];
export type LogFormat = 'text' | 'json';
export const LOG_FORMATS: readonly LogFormat[] = ['text', 'json'];

export interface Log {
  error(msg: string): void;
  warn(msg: string): void;
  info(msg: string): void;
  debug(msg: string): void;
  level: Level;
}

/** Keep a line on one line: a hostile value must not forge a second log line. */
export function oneLine(s: string): string {
  return s.replace(/[\x00-\x1f\x7f]/g, (c) => (c === '\n' ? '\\n' : c === '\t' ? ' ' : '?'));
}

/**
 * A value a peer chose, for a key=value log line: as it is when it is one
 * plain word, else quoted (JSON), so "alice method=PLAIN result=ok" cannot
 * pass for fields of the line.
 */
export function logValue(s: string): string {
  return /^[\w.@+-]+$/.test(s) ? s : JSON.stringify(s);
}

/** The --log-format a command line asks for, for reports made outside a program's log (run.ts). */
export function logFormatIn(args: readonly string[]): LogFormat {
  const i = args.indexOf('--log-format');
  const v = i === -1 ? args.find((a) => a.startsWith('--log-format='))?.slice('--log-format='.length) : args[i + 1];
  return v === 'json' ? 'json' : 'text';
}

// Fields a key=value pair may not overwrite.
const OWN = new Set(['time', 'program', 'level', 'msg']);

/** One event as a JSON object: time, program, level, msg, and the message's key=value pairs (value <...> kept whole). */
export function jsonRecord(program: string, level: Level, msg: string, now = new Date()): Record<string, string> {
  const rec: Record<string, string> = { time: now.toISOString(), program, level, msg };
  for (const m of msg.matchAll(/(?:^|[\s(])([a-z][a-z_]*)=(<[^>]*>|[^\s)]+)/g)) {
    if (!OWN.has(m[1]) && !Object.hasOwn(rec, m[1])) rec[m[1]] = m[2].startsWith('<') ? m[2].slice(1, -1) : m[2];
  }
  return rec;
}

const TAGS: Record<Level, string> = { error: '', warn: 'warning: ', info: '', debug: 'debug: ' };

/** One event as the line written for it, LF included. */
export function logLine(program: string, level: Level, msg: string, format: LogFormat = 'text'): string {
  // JSON.stringify escapes every control character: the record stays on one line.
  if (format === 'json') return `${JSON.stringify(jsonRecord(program, level, msg))}\n`;
  return `${program}: ${TAGS[level]}${oneLine(msg)}\n`;
}

/** A log of `program` at `level`: lines to stderr, or to the stream the function gives at each line. */
export function createLog(stderr: Writable | (() => Writable), program: string, level: Level = 'warn', format: LogFormat = 'text'): Log {
  const rank = (l: Level) => LEVELS.indexOf(l);
  const log: Log = {
    level,
    error: (m) => write('error', m),
    warn: (m) => write('warn', m),
    info: (m) => write('info', m),
    debug: (m) => write('debug', m),
  };
  function write(l: Level, msg: string) {
    if (rank(l) > rank(log.level)) return;
    const out = typeof stderr === 'function' ? stderr() : stderr;
    if (!out.writable) return;
    out.write(logLine(program, l, msg, format));
  }
  return log;
}
