// A deliberately broken program for the fault-barrier tests: faulty.js
// puts it in a toolkit program's place, so a server runs it in-process.
//   timer   throws from a timer; the promise main returns never settles
//   leak    leaves a rejected promise unhandled, then says OK (too late)
//   hang    reads its input, then waits forever, ignoring io.signal
//   wait    reads its input, says so on stderr, then says OK once the file
//           named by its third argument exists (10 s at most), ignoring
//           io.signal: a run the test holds in flight
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Io } from '../src/io.js';

export async function main(args: string[], io: Io): Promise<number> {
  for await (const _ of io.stdin);
  const [mode, address] = args;
  if (mode === 'timer') {
    await new Promise<void>(() =>
      setTimeout(() => {
        throw new Error('thrown in a timer');
      }, 1),
    );
  }
  if (mode === 'leak') {
    void Promise.reject(new Error('a rejection nobody handled'));
    await sleep(200);
  }
  if (mode === 'hang') await new Promise(() => {});
  if (mode === 'wait') io.stderr.write(`waiting for ${args[2]}\n`);
  if (mode === 'wait') for (let waited = 0; !existsSync(args[2]) && waited < 10_000; waited += 20) await sleep(20);
  io.stdout.write(`OK ${address}\n`);
  return 0;
}
