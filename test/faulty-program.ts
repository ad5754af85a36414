// A deliberately broken program for the fault-barrier tests: faulty.js
// puts it in a toolkit program's place, so a server runs it in-process.
//   timer   throws from a timer; the promise main returns never settles
//   leak    leaves a rejected promise unhandled, then says OK (too late)
//   hang    reads its input, then waits forever, ignoring io.signal
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
  io.stdout.write(`OK ${address}\n`);
  return 0;
}
