// The registry of toolkit programs: the names bin/ launches and the names a
// server may run in-process as its handler (DESIGN.md 7).
import type { Main } from '../io.js';

export const PROGRAMS = [
  'make-message',
  'make-cert',
  'server-receive',
  'send-mail',
  'handle-incoming-mail',
  'give-recipient',
  'post-office',
  'fetch-mail',
  'mime-to-ima',
  'ima-to-mime',
  'smtp-receive',
  'queue-mail',
  'run-queue',
  'list-queue',
  'smtp-send',
] as const;
export type ProgramName = (typeof PROGRAMS)[number];

/**
 * The programs that run as daemons or serve a connection on stdin and stdout
 * (--inetd): their standard streams are Node's, never blocking (run.ts).
 */
export const LONG_RUNNING: ReadonlySet<ProgramName> = new Set(['server-receive', 'post-office', 'smtp-receive', 'run-queue']);

export function isProgram(name: string): name is ProgramName {
  return (PROGRAMS as readonly string[]).includes(name);
}

/** Load a program's main lazily: a launcher pays only for the program it runs. */
export async function loadProgram(name: ProgramName): Promise<Main> {
  const mod = (await import(`./${name}.js`)) as { main: Main };
  return mod.main;
}
