// Root: a program that has no use for it refuses it, and a server that
// needs it only to bind a low port gives it up right after (STYLE.md 9).
// IMA_ALLOW_ROOT=1 overrides the refusal, for containers and CI that run
// everything as root.
import { configError, notPermitted } from './failure.js';
import type { Log } from './log.js';

const isRoot = () => process.getuid?.() === 0;

/** Throw (exit 77) when running as root, unless told it is fine or the program will become `user`. */
export function refuseRoot(env: Record<string, string | undefined>, user = ''): void {
  if (!isRoot() || user || env.IMA_ALLOW_ROOT === '1') return;
  throw notPermitted('refusing to run as root: run it as a mail user, set "user" in a server\'s config, or set IMA_ALLOW_ROOT=1');
}

export interface Identity {
  user: string;
  uid: number;
  gid: number;
  groups: number[];
}

/** The uid and primary gid of a user (through the system's user database: id(1)); a config error when there is none. */
export function lookUpUser(user: string, file: string): Identity {
  // node:child_process only here, when a user is looked up, not at every program's start.
  const id = (flag: string) =>
    process
      .getBuiltinModule('node:child_process')
      .execFileSync('id', [flag, '--', user], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
      .trim()
      .split(/\s+/)
      .map(Number);
  try {
    return { user, uid: id('-u')[0], gid: id('-g')[0], groups: id('-G') };
  } catch {
    throw configError(file, 'user', `no such user: ${user}`);
  }
}

/**
 * Become `who` for good: supplementary groups, group, then user (in that
 * order: once the uid is gone, so is the right to change groups). Only
 * root can; anyone else already is whoever they are.
 */
export function becomeUser(who: Identity): boolean {
  if (!isRoot()) return false;
  process.setgroups!(who.groups);
  process.setgid!(who.gid);
  process.setuid!(who.uid);
  return true;
}

/** What a server calls once its socket is bound: become `user` (looked up now, so a bad name fails before binding). */
export function dropAfterBinding(user: string, file: string, log: Log): () => void {
  if (!user) return () => {};
  const who = lookUpUser(user, file);
  return () => {
    if (becomeUser(who)) log.info(`running as ${who.user} (uid ${who.uid}, gid ${who.gid})`);
  };
}
