// The runner: the only place that wires `process` into a program. bin/NAME
// calls launch(); servers run programs in-process through stage.ts.
import type { Readable, Writable } from 'node:stream';
import { EXIT, reportFailure } from './failure.js';
import { boundServerHeap } from './heap.js';
import type { Io } from './io.js';
import { logFormatIn } from './log.js';
import { LONG_RUNNING, type ProgramName, loadProgram } from './programs/index.js';
import { claimStrayFault } from './stage.js';
import { FdReader, FdWriter, isPlainStream } from './stdio.js';

/** The program's stdin once it has touched it (processIo's getter): only then is there a stdin to be done with. */
let stdinMade: Readable | undefined;

/** A closed reader of stdout or stderr (| head) is the reader's choice, not our failure. */
function ignoringEpipe<W extends Writable>(w: W): W {
  return w.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') throw e;
  });
}

/**
 * A standard output of the process, made at first use: a stage's pipe,
 * socket or file is written directly (stdio.ts), anything else by Node's
 * stream. In a stage, process.stdout (or stderr) is then that same writer:
 * Node's pipe() reads process.stdout and process.stderr at every call (to
 * leave them open), and a package may console.log; either would otherwise
 * build Node's stream beside ours (for a pipe: net, and O_NONBLOCK on the
 * descriptor). A server's are Node's, made at once so that their EPIPE
 * handler is on before anything writes.
 */
function standardOutput(name: 'stdout' | 'stderr', fd: 1 | 2, stage: boolean): () => Writable {
  const nodeGet = Object.getOwnPropertyDescriptor(process, name)?.get;
  const node = () => (nodeGet ? (nodeGet.call(process) as Writable) : process[name]);
  let made: Writable | undefined;
  const get = () => (made ??= ignoringEpipe(stage && isPlainStream(fd) ? new FdWriter(fd, node) : node()));
  if (!stage) get();
  else if (nodeGet) Object.defineProperty(process, name, { configurable: true, enumerable: true, get });
  return get;
}

/**
 * The Io of the real process. The standard streams are made on first use:
 * Node builds process.stdin at the first touch (a couple of milliseconds at
 * start-up), and many runs never read it. A stage's pipes, sockets and files
 * are read and written directly (stdio.ts); a program in LONG_RUNNING and a
 * terminal get Node's streams.
 */
export function processIo(program: ProgramName): Io {
  const stage = !LONG_RUNNING.has(program);
  const stdout = standardOutput('stdout', 1, stage);
  const stderr = standardOutput('stderr', 2, stage);
  return {
    get stdin() {
      return (stdinMade ??= stage && isPlainStream(0) ? new FdReader(0, () => process.stdin) : process.stdin);
    },
    get stdout() {
      return stdout();
    },
    get stderr() {
      return stderr();
    },
    env: process.env,
    cwd: process.cwd(),
    signals: process,
  };
}

/**
 * The program has answered: what it left unread of stdin is not wanted.
 * Left open, stdin would hold the process (a refusal after the headers, with
 * a writer that keeps stdin open) until the writer sends more or closes.
 * The writer learns from EPIPE that nobody reads any more. (In-process, the
 * runner drains the input instead: stage.ts.)
 */
function doneWithStdin(): void {
  if (stdinMade && !stdinMade.readableEnded) stdinMade.destroy();
}

/** Run a toolkit program as this process, with the exit code semantics of DESIGN.md 2. */
export function launch(program: ProgramName): void {
  const io = processIo(program);
  if (LONG_RUNNING.has(program)) boundServerHeap();
  const format = logFormatIn(process.argv);
  let answered = false;
  loadProgram(program)
    .then((main) => main(process.argv.slice(2), io))
    .then(
      (code) => {
        answered = true;
        process.exitCode = code;
        doneWithStdin();
      },
      (err) => {
        answered = true;
        process.exitCode = reportFailure(io, program, err, format);
        doneWithStdin();
      },
    );
  // Node exits 0 when nothing is left to wait on, even if the program never
  // answered (a promise no event will ever settle): that must not read as OK.
  process.on('exit', () => {
    if (answered || process.exitCode) return;
    reportFailure(io, program, new Error('the program stopped without an answer (it waited on something that can never happen)'), format);
    process.exitCode = EXIT.TEMPFAIL;
  });
  // Nothing is left to run or to write: exit now. Node's own exit would
  // first tear down the heap page by page: 0.4-0.8 ms of the 30 that a
  // spawned handle-incoming-mail --check takes (issue 13 wants a stage
  // within 1.5x of bare node's start).
  process.once('beforeExit', () => process.exit());
  // A fault outside any promise chain: an in-process run's ends that run
  // (stage.ts, the fault barrier); the process's own ends the process.
  const fatal = (err: unknown) => {
    if (claimStrayFault(err)) return;
    reportFailure(io, program, err, format);
    process.exit(EXIT.TEMPFAIL);
  };
  process.on('uncaughtException', fatal);
  process.on('unhandledRejection', fatal);
}
