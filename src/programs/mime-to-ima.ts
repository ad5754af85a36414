// mime-to-ima: convert one legacy RFC 5322/MIME message into an IMA message.
//
// It does not deliver or route anything (pipe it to handle-incoming-mail or
// queue-mail), does not check signatures, and writes nothing unless the
// whole message converted: a failure never leaves half a message.
import { type FileHandle, open } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import type { Argv } from 'yargs';
import { openInput, start } from '../cli.js';
import { integer, optional, size, string, table } from '../config.js';
import { EXIT, noInput, usageError } from '../failure.js';
import { writeFileAtomic } from '../files.js';
import type { Io } from '../io.js';
import { INPUT_CHUNK, MIME_LIMITS, readMime } from '../mime/to-ima.js';
import { writeMessage } from '../message/index.js';
import { BufferPool, handingBack, pooledReader, writesThrough } from '../spool.js';

const schema = table({
  max_message_bytes: optional(size({ min: 1024 }), MIME_LIMITS.maxMessageBytes),
  max_header_bytes: optional(size({ min: 1024 }), MIME_LIMITS.maxHeaderBytes),
  max_parts: optional(integer({ min: 1, max: 100_000 }), MIME_LIMITS.maxParts),
  max_depth: optional(integer({ min: 1, max: 1000 }), MIME_LIMITS.maxDepth),
  spool_dir: optional(string({ nonEmpty: true }), ''),
});

const options = (y: Argv) =>
  y
    .option('output', { alias: 'o', type: 'string', describe: 'Write to FILE (atomically) instead of stdout', requiresArg: true })
    .option('force', { type: 'boolean', describe: 'Write the binary message to a terminal anyway' });

async function openFile(file: string, io: Io, pool: BufferPool): Promise<Readable> {
  let handle: FileHandle;
  try {
    handle = await open(resolve(io.cwd, file), 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw noInput(file, code === 'ENOENT' ? 'no such file' : `cannot read (${code})`);
  }
  // A directory opens; only its first read fails (EISDIR), which would be taken for trouble worth retrying.
  if ((await handle.stat()).isDirectory()) {
    await handle.close();
    throw noInput(file, 'is a directory');
  }
  const input = pooledReader(handle, pool);
  // readMime reports the input's errors; the one it destroys the input with on a bad message comes back after.
  input.on('error', () => {});
  return input;
}

export async function main(args: string[], io: Io): Promise<number> {
  const s = await start({ name: 'mime-to-ima', role: 'user', usage: '$0 [options] [FILE]', schema, options }, args, io);
  if (typeof s === 'number') return s;
  const { argv, config, source } = s;
  const [file, ...extra] = argv._.map(String);
  if (extra.length) throw usageError('expected at most one FILE');
  if (!argv.output && (io.stdout as { isTTY?: boolean }).isTTY && !argv.force) {
    throw usageError('refusing to write a binary message to a terminal: use --output FILE, a pipe, or --force');
  }
  // A FILE is read into buffers handed back as soon as the parser is done with them (see readMime's inputChunks).
  const inputChunks = file ? new BufferPool(INPUT_CHUNK) : undefined;
  const input = file ? await openFile(file, io, inputChunks!) : await openInput(undefined, io);
  const message = await readMime(input, {
    inputChunks,
    limits: { maxMessageBytes: config.max_message_bytes, maxHeaderBytes: config.max_header_bytes, maxParts: config.max_parts, maxDepth: config.max_depth },
    spoolDir: config.spool_dir ? resolve(source.dir, config.spool_dir) : undefined,
  });
  // A file or the process's stdout is done with a chunk once written: the chunks of spooled parts are then reused.
  const dest = (out: Writable) => (writesThrough(out) ? handingBack(out, message.readBuffers) : out);
  try {
    if (argv.output) await writeFileAtomic(resolve(io.cwd, argv.output), (out) => writeMessage(dest(out), message));
    else await writeMessage(dest(io.stdout), message);
  } finally {
    await message.dispose();
  }
  return EXIT.OK;
}
