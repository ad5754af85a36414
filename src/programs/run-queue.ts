// run-queue: deliver the outgoing queue. Each due message goes to the
// delivery stage (send-mail: IMDP, or smtp-send for legacy domains) once
// per recipient domain, with the recipients still to do; results are kept
// per recipient, temporary failures retried on Postfix's schedule, final
// failures told to the sender in one notice.
//
// It does not speak any protocol itself and reads nothing of a stage but
// its result lines and exit code (DESIGN.md 2), so any stage that honours
// them can take send-mail's place. SIGTERM lets running stages finish and
// records their results; SIGHUP reads the config and the operators'
// requests again.
import type { Argv } from 'yargs';
import { start } from '../cli.js';
import { mailboxProblem } from '../address.js';
import { boolean, command, configPath, duration, integer, optional, string, table } from '../config.js';
import { EXIT, asFailure, usageError } from '../failure.js';
import type { Io } from '../io.js';
import type { Log } from '../log.js';
import { parseOperation } from '../queue/operations.js';
import { Runner, type RunnerConfig } from '../queue/runner.js';
import { DirQueue } from '../queue/store.js';

const schema = table({
  queue_dir: optional(string({ nonEmpty: true }), '/var/spool/ima/queue'),
  command: optional(command(), ['send-mail']),
  notice_command: optional(command(), ['queue-mail']),
  notice_from: optional(string({ check: (s) => (s === '' ? undefined : mailboxProblem(s)) }), ''),
  in_process: optional(boolean(), true),
  stage_timeout: optional(duration(), 10 * 60_000),
  max_parallel: optional(integer({ min: 1, max: 1000 }), 10),
  max_per_domain: optional(integer({ min: 1, max: 1000 }), 4),
  domain_defer: optional(duration({ zero: 'never' }), 5 * 60_000),
  min_backoff: optional(duration({ zero: 'retry at once' }), 5 * 60_000),
  max_backoff: optional(duration({ zero: 'retry at once' }), 60 * 60_000),
  max_lifetime: optional(duration({ timer: false }), 120 * 3_600_000),
  delay_warning: optional(duration({ zero: 'never', timer: false }), 0),
  poll_interval: optional(duration(), 60_000),
});
type Config = ReturnType<typeof schema.parse>;

const options = (y: Argv) =>
  y
    .option('once', { type: 'boolean', describe: 'Deliver what is due now, then exit (for cron and tests)' })
    .option('now', { type: 'string', describe: 'With --once: act as if the time were TIME (RFC 3339)', requiresArg: true });

function runnerConfig(c: Config): RunnerConfig {
  return {
    command: c.command,
    noticeCommand: c.notice_command,
    noticeFrom: c.notice_from,
    inProcess: c.in_process,
    stageTimeout: c.stage_timeout,
    maxParallel: c.max_parallel,
    maxPerDomain: c.max_per_domain,
    domainDefer: c.domain_defer,
    pollInterval: c.poll_interval,
    schedule: { minBackoff: c.min_backoff, maxBackoff: c.max_backoff, maxLifetime: c.max_lifetime, delayWarning: c.delay_warning },
  };
}

export async function main(args: string[], io: Io): Promise<number> {
  const s = await start({ name: 'run-queue', role: 'server', usage: '$0 [--once [--now TIME]]', schema, options, notAsRoot: true }, args, io);
  if (typeof s === 'number') return s;
  const { argv, config, source, log } = s;
  if (argv._.length) throw usageError('run-queue takes no arguments');
  const fixed = argv.now === undefined ? undefined : Date.parse(argv.now);
  if (fixed !== undefined && (Number.isNaN(fixed) || !argv.once)) throw usageError('--now needs --once and an RFC 3339 time');
  const store = await new DirQueue(configPath(source, config.queue_dir)).init();
  const release = await store.lock();
  try {
    const now = () => fixed ?? Date.now();
    const runner = new Runner(store, runnerConfig(config), { env: io.env, cwd: io.cwd, stderr: io.stderr, log, now });
    const cleaned = await store.clean(3_600_000);
    if (cleaned) log.info(`removed ${cleaned} leftovers of interrupted writers`);
    await takeRequests(store, runner, log);
    if (argv.once) await onePass(store, runner, io, log);
    else {
      const reload = async () => {
        const r = await start({ name: 'run-queue', role: 'server', usage: '', schema, options }, args, io);
        return typeof r === 'number' ? undefined : runnerConfig(r.config);
      };
      await serve(store, runner, io, log, reload);
    }
    const st = runner.stats;
    log.info(`${st.runs} stage runs: ${st.delivered} delivered, ${st.deferred} deferred, ${st.failed} failed, ${st.notices} notices`);
    return EXIT.OK;
  } finally {
    await release();
  }
}

async function takeRequests(store: DirQueue, runner: Runner, log: Log): Promise<void> {
  await store.takeRequests(async (line) => {
    try {
      const n = await runner.apply(parseOperation(line));
      log.info(`request "${line}": ${n} messages`);
    } catch (e) {
      log.error(`request "${line}": ${asFailure(e).message}; dropped`);
    }
  });
}

/**
 * --once (from cron): one pass over what is due. It holds the lock, so
 * list-queue nudges it with SIGHUP as it would the daemon: the requests are
 * taken when the pass is done, not by a signal's default action killing the
 * run mid-delivery. SIGTERM and SIGINT start no more stage runs and let the
 * running ones finish and record their results.
 */
async function onePass(store: DirQueue, runner: Runner, io: Io, log: Log): Promise<void> {
  let requests = false;
  const onHup = () => {
    if (!requests) log.info('SIGHUP: the requests are taken when this pass is done');
    requests = true;
  };
  const onTerm = () => {
    runner.stopping = true;
    log.info('stopping: letting running deliveries finish');
  };
  io.signals?.on('SIGHUP', onHup);
  io.signals?.on('SIGTERM', onTerm);
  io.signals?.on('SIGINT', onTerm);
  try {
    await runner.pass();
    await runner.idle();
    if (requests) await takeRequests(store, runner, log);
  } finally {
    io.signals?.off('SIGHUP', onHup);
    io.signals?.off('SIGTERM', onTerm);
    io.signals?.off('SIGINT', onTerm);
  }
}

/** The long-running loop: a pass whenever something is due, arrives, or is asked for; SIGTERM ends it. */
async function serve(store: DirQueue, runner: Runner, io: Io, log: Log, reload: () => Promise<RunnerConfig | undefined>): Promise<void> {
  let wake: (() => void) | undefined;
  let poked = false;
  let requests = false;
  let stop = false;
  const poke = () => {
    poked = true;
    wake?.();
  };
  runner.onSettled = poke;
  const onTerm = () => {
    stop = true;
    runner.stopping = true;
    log.info('stopping: letting running deliveries finish');
    poke();
  };
  const onHup = () => {
    requests = true;
    reload().then(
      (c) => {
        if (c) runner.config = c;
        log.info(c ? 'SIGHUP: config reloaded' : 'SIGHUP: config not reloaded (see above); keeping the old one');
      },
      (e) => log.error(`SIGHUP: ${asFailure(e).message}; keeping the old config`),
    );
    poke();
  };
  io.signals?.on('SIGTERM', onTerm);
  io.signals?.on('SIGINT', onTerm);
  io.signals?.on('SIGHUP', onHup);
  io.signal?.addEventListener('abort', onTerm, { once: true });
  const unwatch = store.watch((what) => {
    if (what === 'control') requests = true;
    poke();
  });
  log.info(`delivering the queue in ${store.dir}`);
  try {
    while (!stop) {
      if (requests) {
        requests = false;
        await takeRequests(store, runner, log);
      }
      await runner.pass().catch((e) => log.error(`scanning the queue: ${asFailure(e).message}`));
      if (poked || stop) {
        poked = false;
        continue;
      }
      const wait = Math.max(0, Math.min(runner.nextWake() - Date.now(), runner.config.pollInterval));
      await new Promise<void>((res) => {
        const t = setTimeout(res, wait);
        wake = () => {
          clearTimeout(t);
          res();
        };
      });
      wake = undefined;
      poked = false;
    }
    await runner.idle();
  } finally {
    unwatch();
    io.signals?.off('SIGTERM', onTerm);
    io.signals?.off('SIGINT', onTerm);
    io.signals?.off('SIGHUP', onHup);
    io.signal?.removeEventListener('abort', onTerm);
  }
}
