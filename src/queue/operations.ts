// An operator's requests (list-queue --retry/--hold/--release/--delete), as
// the one-line text left in control/ for a running run-queue:
//
//   retry ID | retry @DOMAIN | retry ALL
//   hold ID | hold ALL, release ID | release ALL, delete ID
//
// Whoever holds the queue lock applies them: run-queue, or list-queue itself
// when no run-queue is running.
import { asciiDomain } from '../address.js';
import { usageError } from '../failure.js';
import { type MessageState, pending } from './state.js';
import { type QueueStore, isQueueId } from './store.js';

export type Verb = 'retry' | 'hold' | 'release' | 'delete';
export type Target = { id: string } | { domain: string } | { all: true };
export interface Operation {
  verb: Verb;
  target: Target;
}

const VERBS: readonly Verb[] = ['retry', 'hold', 'release', 'delete'];

/** A target as an operator writes it: a queue id, @domain (retry only) or ALL. */
export function parseTarget(verb: Verb, text: string): Target {
  if (text === 'ALL' && verb !== 'delete') return { all: true };
  if (text.startsWith('@') && verb === 'retry') {
    try {
      return { domain: asciiDomain(text.slice(1)) };
    } catch {
      throw usageError(`--${verb}: ${JSON.stringify(text)} is not @DOMAIN`);
    }
  }
  if (isQueueId(text)) return { id: text };
  const also = verb === 'retry' ? ', @DOMAIN or ALL' : verb === 'delete' ? '' : ' or ALL';
  throw usageError(`--${verb}: ${JSON.stringify(text)} is not a queue id${also}`);
}

export function parseOperation(line: string): Operation {
  const [verb, target, ...rest] = line.split(' ');
  if (!VERBS.includes(verb as Verb) || !target || rest.length) throw usageError(`not a queue request: ${JSON.stringify(line)}`);
  return { verb: verb as Verb, target: parseTarget(verb as Verb, target) };
}

export function formatOperation(op: Operation): string {
  const t = op.target;
  return `${op.verb} ${'id' in t ? t.id : 'domain' in t ? `@${t.domain}` : 'ALL'}`;
}

/** Does the operation concern this message? */
export function concerns(op: Operation, s: MessageState): boolean {
  const t = op.target;
  if ('id' in t) return s.id === t.id;
  if ('domain' in t) return s.recipients.some((r) => r.domain === t.domain && pending(r));
  return true;
}

/** Change the state; answers whether the message is to be removed. */
export function applyOperation(op: Operation, s: MessageState, now: number): 'changed' | 'delete' | 'unchanged' {
  const at = new Date(now).toISOString();
  switch (op.verb) {
    case 'delete':
      return 'delete';
    case 'hold':
    case 'release':
      if (s.held === (op.verb === 'hold')) return 'unchanged';
      s.held = op.verb === 'hold';
      return 'changed';
    case 'retry': {
      const t = op.target;
      let changed = false;
      for (const r of s.recipients) {
        if (r.state !== 'deferred' || ('domain' in t && r.domain !== t.domain)) continue;
        r.next_attempt = at;
        changed = true;
      }
      return changed ? 'changed' : 'unchanged';
    }
  }
}

/** Apply an operation to stored states (when no run-queue holds the lock, or to messages it is not working on). */
export async function applyStored(store: QueueStore, op: Operation, now: number, ids?: string[]): Promise<string[]> {
  const done: string[] = [];
  for (const id of ids ?? ('id' in op.target ? [op.target.id] : await store.ids())) {
    const s = await store.readState(id);
    if (!s || !concerns(op, s)) continue;
    const what = applyOperation(op, s, now);
    if (what === 'unchanged') continue;
    if (what === 'delete') await store.remove(id);
    else await store.writeState(s);
    done.push(id);
  }
  return done;
}
