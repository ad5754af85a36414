// list-queue: show the outgoing queue, for people (a table, like mailq) and
// for scripts (--json: one object per line, like postqueue -j); and the
// operators' requests: retry now, hold, release, delete.
//
// It never delivers. A request goes to the running run-queue (through the
// queue's control directory; it waits until run-queue has applied it), or,
// when none runs, is applied here under the same lock run-queue takes.
import { once } from 'node:events';
import type { Argv } from 'yargs';
import { start } from '../cli.js';
import { MAX_TIMER, configPath, optional, parseDuration, string, table } from '../config.js';
import { EXIT, asFailure, tempFail, usageError } from '../failure.js';
import type { Io } from '../io.js';
import { type Operation, type Verb, applyStored, formatOperation, parseOperation, parseTarget } from '../queue/operations.js';
import { type MessageState, byArrival } from '../queue/state.js';
import { DirQueue } from '../queue/store.js';

const schema = table({
  queue_dir: optional(string({ nonEmpty: true }), '/var/spool/ima/queue'),
});

const VERBS: readonly Verb[] = ['retry', 'hold', 'release', 'delete'];
const options = (y: Argv) =>
  y
    .option('json', { type: 'boolean', describe: 'One JSON object per message and line' })
    .option('retry', { type: 'string', describe: 'Retry now: a queue id, @DOMAIN or ALL; repeatable', requiresArg: true })
    .option('hold', { type: 'string', describe: 'Hold (deliver nothing of) a queue id, or ALL; repeatable', requiresArg: true })
    .option('release', { type: 'string', describe: 'Release a held queue id, or ALL; repeatable', requiresArg: true })
    .option('delete', { type: 'string', describe: 'Delete a queue id (no notice); repeatable', requiresArg: true })
    .option('wait', { type: 'string', describe: 'How long to wait for a running run-queue to apply a request', default: '30s', requiresArg: true });

export async function main(args: string[], io: Io): Promise<number> {
  const s = await start(
    { name: 'list-queue', role: 'server', usage: '$0 [--json]\n$0 --retry|--hold|--release|--delete TARGET...', schema, options },
    args,
    io,
  );
  if (typeof s === 'number') return s;
  const { argv, config, source, log } = s;
  // "--hold ID1 ID2" holds ID1 only: the second id must not be dropped silently.
  if (argv._.length) throw usageError(`unexpected argument "${argv._[0]}": each target needs its own --retry, --hold, --release or --delete`);
  const store = await new DirQueue(configPath(source, config.queue_dir)).init();
  const ops: Operation[] = VERBS.flatMap((verb) =>
    ([] as string[]).concat((argv[verb] as string | string[] | undefined) ?? []).map((t) => ({ verb, target: parseTarget(verb, t) })),
  );
  if (ops.length) {
    const wait = waitMs(String(argv.wait)); // checked whether or not it is needed: a bad one is a bad command line
    const holder = await store.lockHolder();
    if (holder !== undefined) await sendRequests(store, ops, wait, holder);
    else await applyHere(store, ops, io, (line) => io.stdout.write(`${line}\n`));
    return EXIT.OK;
  }
  // A state that cannot be read is named on stderr and the rest listed; the exit says the list is not whole.
  let unread = 0;
  const states: MessageState[] = [];
  for (const id of await store.ids()) {
    try {
      const st = await store.readState(id);
      if (st) states.push(st);
    } catch (e) {
      log.error(asFailure(e).message);
      unread++;
    }
  }
  for (const st of states.sort(byArrival)) io.stdout.write(argv.json ? `${JSON.stringify(asJson(st))}\n` : asText(st));
  return unread ? EXIT.TEMPFAIL : EXIT.OK;
}

function waitMs(text: string): number {
  const ms = parseDuration(text);
  if (ms === undefined) throw usageError(`--wait: ${text} is not a duration such as 30s`);
  // Longer, the timer would fire at once and every request "time out" unseen.
  if (ms > MAX_TIMER) throw usageError(`--wait: ${text} is longer than a timer can wait (24.8 days)`);
  return ms;
}

/** Leave the requests for the running run-queue and wait until it has taken them. */
async function sendRequests(store: DirQueue, ops: Operation[], wait: number, holder: number): Promise<void> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), wait);
  const changed = new EventTarget();
  const unwatch = store.watch(() => changed.dispatchEvent(new Event('change')));
  try {
    const names = [];
    for (const op of ops) names.push(await store.request(formatOperation(op)));
    try {
      process.kill(holder, 'SIGHUP'); // in case its directory watch missed the file
    } catch {
      // Not ours to signal: its watch will see the file.
    }
    for (const n of names) {
      while (await store.requestPending(n)) await once(changed, 'change', { signal: ac.signal });
    }
  } catch (e) {
    if (ac.signal.aborted) throw tempFail(`run-queue (pid ${holder}) has not taken the request within ${wait} ms; it stays in ${store.control}`);
    throw e;
  } finally {
    clearTimeout(timer);
    unwatch();
  }
}

/**
 * No run-queue runs: take its lock and apply the requests to the stored
 * states. Another list-queue that finds the lock held leaves its requests in
 * control/ and sends SIGHUP, as to run-queue: they are applied here too
 * before the lock goes, and the signal must not end this process.
 */
async function applyHere(store: DirQueue, ops: Operation[], io: Io, say: (line: string) => void): Promise<void> {
  const release = await store.lock();
  const nudged = () => {};
  io.signals?.on('SIGHUP', nudged);
  try {
    for (const op of ops) {
      const ids = await applyStored(store, op, Date.now());
      say(`${formatOperation(op)}: ${ids.length ? ids.join(' ') : 'nothing to do'}`);
    }
    await store.takeRequests(async (line) => {
      try {
        await applyStored(store, parseOperation(line), Date.now());
      } catch (e) {
        io.stderr.write(`list-queue: request "${line}": ${asFailure(e).message}; dropped\n`);
      }
    });
  } finally {
    io.signals?.off('SIGHUP', nudged);
    await release();
  }
}

function asJson(s: MessageState) {
  return {
    queue_id: s.id,
    arrival: s.arrival,
    size: s.size,
    sender: s.sender,
    message_id: s.message_id,
    held: s.held,
    notice: s.notice,
    recipients: s.recipients.map((r) => ({
      address: r.address,
      state: r.state,
      attempts: r.attempts,
      next_attempt: r.state === 'queued' || r.state === 'deferred' ? r.next_attempt : '',
      last_reply: r.last_reply,
    })),
  };
}

function asText(s: MessageState): string {
  const head = `${s.id}${s.held ? ' (held)' : ''}  ${s.size} bytes  ${s.arrival}  from ${s.sender || '<>'}${s.notice ? ` (${s.notice} notice)` : ''}\n`;
  const lines = s.recipients.map((r) => {
    const when = r.state === 'deferred' ? ` next ${r.next_attempt}` : '';
    const reply = r.last_reply && r.state !== 'delivered' ? `\n      ${r.last_reply}` : '';
    return `    ${r.address}  ${r.state}, ${r.attempts} attempts${when}${reply}\n`;
  });
  return `${head}${lines.join('')}\n`;
}
