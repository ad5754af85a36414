// Several processes serving one listening socket: the `workers` key of
// server-receive and smtp-receive, as Postfix runs several smtpd processes.
// One Node process uses one core; a second worker is what lets a receiver
// use the second core of a small machine.
//
// The program started by the operator becomes the primary: it forks the
// workers (the same program, same arguments, through node:cluster), binds
// the socket for them (port 25 needs root; the primary gives root up once
// every worker is listening), forwards SIGTERM, SIGINT and SIGHUP (SIGHUP to
// a starting worker once it listens), starts a
// new worker when one dies after it was serving, and exits when all are gone.
// The primary never accepts: each worker accepts on the shared socket itself
// (cluster's SCHED_NONE), so no connection is passed between processes.
import cluster, { type Worker } from 'node:cluster';
import type { EventEmitter } from 'node:events';
import { EXIT } from '../failure.js';
import type { Io } from '../io.js';
import type { Log } from '../log.js';
import type { Where } from './listen.js';

/**
 * Should this process supervise workers rather than serve? With more than
 * one asked for, as the process the operator started (not a worker, not
 * in-process under a test), on a listening socket (under inetd one
 * connection is one process).
 */
export function supervises(workers: number, where: Where, io: Io): boolean {
  return workers > 1 && where.mode !== 'inetd' && io.signals !== undefined && !cluster.isWorker;
}

/** The pid a LISTEN_PID must name for the LISTEN_FDS sockets to be ours: in a worker, its primary's (it holds them). */
export const listenPid = (): number => (cluster.isWorker ? process.ppid : process.pid);

/** A worker's server is over: leave the cluster so the process can exit with its own code. */
export function leaveCluster(): void {
  if (cluster.isWorker && cluster.worker?.isConnected()) cluster.worker.disconnect();
}

export interface WorkerOptions {
  log: Log;
  /** Where SIGTERM, SIGINT and SIGHUP come from (the process). */
  signals: EventEmitter;
  /** Called once every worker listens: give up root (the bound socket stays usable). */
  onListening?(): void;
  /** ms before a worker that died while serving is replaced (a worker that dies at once would otherwise be restarted in a loop). */
  restartDelay?: number;
}

/** Fork `count` workers and supervise them until they have all stopped; the exit code of the whole. */
export function runWorkers(count: number, opts: WorkerOptions): Promise<number> {
  const { log, signals } = opts;
  cluster.schedulingPolicy = cluster.SCHED_NONE; // before the first fork
  const live = new Set<Worker>();
  const served = new WeakSet<Worker>();
  /** Workers a SIGHUP came for while they were still starting. */
  const reloadOnceServing = new WeakSet<Worker>();
  let stopping = false;
  let code: number = EXIT.OK;
  let listening = 0;

  return new Promise<number>((resolve) => {
    let over = false;
    const finished = () => {
      if (over) return;
      over = true;
      signals.off('SIGTERM', stop);
      signals.off('SIGINT', stop);
      signals.off('SIGHUP', reload);
      cluster.off('listening', onListening);
      resolve(code);
    };
    const stop = () => {
      if (stopping) return;
      stopping = true;
      log.info(`stopping: telling ${live.size} worker(s) to finish`);
      for (const w of live) w.process.kill('SIGTERM');
      if (live.size === 0) finished(); // all had died, their replacements not yet started
    };
    const reload = () => {
      for (const w of live) {
        // A worker still starting has no SIGHUP handler yet: the signal would kill it (and a
        // first worker stopped before serving stops the whole). It gets the signal once it listens.
        if (served.has(w)) w.process.kill('SIGHUP');
        else reloadOnceServing.add(w);
      }
    };
    const onListening = (w: Worker) => {
      if (served.has(w)) return;
      served.add(w);
      if (reloadOnceServing.delete(w)) w.process.kill('SIGHUP');
      if (++listening === count) {
        log.info(`${count} workers serving`);
        opts.onListening?.();
      }
    };
    const fork = () => {
      const w = cluster.fork();
      live.add(w);
      w.on('error', (e) => log.debug(`worker ${w.process.pid}: ${e.message}`));
      w.on('exit', (status: number | null, signal: string | null) => {
        live.delete(w);
        const how = signal ? `signal ${signal}` : `exit code ${status}`;
        if (stopping) {
          if (status !== EXIT.OK && code === EXIT.OK) code = status ?? EXIT.TEMPFAIL; // the first trouble is the one to report
          if (live.size === 0) finished();
        } else if (!served.has(w) && listening < count) {
          // One of the first never listened: a bad config, a port taken. Another would fail the same way.
          log.error(`worker ${w.process.pid} stopped before serving (${how}): stopping`);
          code = status || EXIT.TEMPFAIL;
          stop();
        } else if (!served.has(w)) {
          // A replacement that cannot start (the config or a file changed since, read now as `user`):
          // the others go on; restarting it would fail the same way, once a second.
          log.error(`worker ${w.process.pid} could not start (${how}): serving with ${live.size} worker(s)`);
          if (live.size === 0) {
            code = status || EXIT.TEMPFAIL;
            finished();
          }
        } else {
          log.error(`worker ${w.process.pid} died (${how}): starting another`);
          setTimeout(() => stopping || fork(), opts.restartDelay ?? 1000);
        }
      });
    };
    signals.on('SIGTERM', stop);
    signals.on('SIGINT', stop);
    signals.on('SIGHUP', reload);
    cluster.on('listening', onListening);
    for (let i = 0; i < count; i++) fork();
  });
}
