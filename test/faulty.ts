// Run a toolkit program as a real process, as bin/NAME does, with faults
// injected for the fault-barrier tests (stage.test.ts). Nothing here is in
// the shipped code: the faults come from outside, as a disk or a buggy
// program would bring them.
//
//   node dist/test/faulty.js NAME [ARGS...]
//   IMA_FAULT_PROGRAM=NAME=/abs/module.mjs  the toolkit program NAME, when loaded
//                                           (in-process), is that module instead
//   IMA_FAULT_EIO=TEXT                      fsync of a file whose path contains TEXT
//                                           fails with EIO, as a failing disk's does
import fs, { readlinkSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { register, syncBuiltinESMExports } from 'node:module';
import { pathToFileURL } from 'node:url';
import { isProgram } from '../src/programs/index.js';

const [name] = process.argv.slice(2);
if (!name || !isProgram(name)) throw new Error(`usage: faulty.js PROGRAM [ARGS...] (not a program: ${name})`);

const swap = process.env.IMA_FAULT_PROGRAM;
if (swap) {
  const [program, file] = swap.split('=');
  // A resolve hook: the registry's import of ./PROGRAM.js yields the test module.
  const hooks = `export async function resolve(specifier, context, next) {
  if (specifier === './${program}.js' && context.parentURL?.endsWith('/programs/index.js')) return { url: ${JSON.stringify(pathToFileURL(file).href)}, shortCircuit: true };
  return next(specifier, context);
}`;
  register(`data:text/javascript,${encodeURIComponent(hooks)}`);
}

const eio = process.env.IMA_FAULT_EIO;
if (eio) {
  const probe = await open('/dev/null', 'r');
  const proto = Object.getPrototypeOf(probe) as { sync: (this: { fd: number }) => Promise<void> };
  await probe.close();
  const sync = proto.sync;
  const failing = (fd: number) =>
    readlinkSync(`/proc/self/fd/${fd}`).includes(eio)
      ? Object.assign(new Error('EIO: i/o error, fsync'), { errno: -5, code: 'EIO', syscall: 'fsync' })
      : undefined;
  proto.sync = async function (this: { fd: number }) {
    const e = failing(this.fd);
    if (e) throw e;
    return sync.call(this);
  };
  // The callback form too (the mailbox syncs plain descriptors with it).
  const fsync = fs.fsync;
  fs.fsync = ((fd: number, cb: (e: NodeJS.ErrnoException | null) => void) => {
    const e = failing(fd);
    if (e) return process.nextTick(cb, e);
    fsync(fd, cb);
  }) as typeof fs.fsync;
  syncBuiltinESMExports();
}

process.argv.splice(2, 1);
const { launch } = await import('../src/run.js');
launch(name);
