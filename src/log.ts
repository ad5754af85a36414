// Diagnostics on stderr, one line per event: "program: message".
// Never stdout: that belongs to the next stage of the pipeline.
import type { Writable } from 'node:stream';

export type Level = 'error' | 'warn' | 'info' | 'debug';
export const LEVELS: readonly Level[] = ['error', 'warn', 'info', 'debug'];

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

export function createLog(stderr: Writable, program: string, level: Level = 'warn'): Log {
  const rank = (l: Level) => LEVELS.indexOf(l);
  const log: Log = {
    level,
    error: (m) => write('error', '', m),
    warn: (m) => write('warn', 'warning: ', m),
    info: (m) => write('info', '', m),
    debug: (m) => write('debug', 'debug: ', m),
  };
  function write(l: Level, tag: string, msg: string) {
    if (rank(l) > rank(log.level)) return;
    if (!stderr.writable) return;
    stderr.write(`${program}: ${tag}${oneLine(msg)}\n`);
  }
  return log;
}
