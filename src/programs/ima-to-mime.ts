// ima-to-mime: write IMA messages as legacy MIME, to stdout or into a
// standard Maildir for mutt, aerc, mblaze and every other Maildir reader.
//
// It does not send anything (smtp-send does), never changes its input, and
// never stores a message twice in a Maildir: run it again over the same
// messages and it adds only the new ones.
import { type FileHandle, lstat, open } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Writable } from 'node:stream';
import type { Argv } from 'yargs';
import { openInput, start } from '../cli.js';
import { boolean, integer, optional, size, string, table } from '../config.js';
import { EXIT, Failure, asFailure, dataError, noInput, usageError } from '../failure.js';
import type { Io } from '../io.js';
import type { Log } from '../log.js';
import { Maildir } from '../maildir.js';
import { messageName } from '../mailbox.js';
import { DEFAULT_LIMITS, type MessageLimits, MessageError, type MessageParts } from '../message/index.js';
import { messageDirParts, spoolIma, writeMime } from '../mime/to-mime.js';
import { BufferPool, InOrderReader, SpoolStore } from '../spool.js';

const schema = table({
  maildir: optional(string(), ''),
  newline: optional(string({ oneOf: ['lf', 'crlf'] }), 'lf'),
  keep_bcc: optional(boolean(), true),
  max_message_bytes: optional(size({ min: 1024 }), 2 * 1024 ** 3),
  max_header_bytes: optional(size({ min: 256 }), DEFAULT_LIMITS.maxHeaderBytes),
  max_entries: optional(integer({ min: 1 }), DEFAULT_LIMITS.maxEntries),
  spool_dir: optional(string({ nonEmpty: true }), ''),
});

const options = (y: Argv) =>
  y
    .option('maildir', { alias: 'm', type: 'string', describe: 'Store each MESSAGE in the Maildir DIR instead of writing stdout', requiresArg: true })
    .option('crlf', { type: 'boolean', describe: 'CRLF line ends (as on the wire) instead of LF' })
    .option('bcc', { type: 'boolean', describe: 'Write the bcc header (--no-bcc leaves it out)' });

interface Job {
  limits: MessageLimits;
  spoolDir?: string;
  opts: { newline: 'lf' | 'crlf'; keepBcc: boolean };
}

const INPUT_CHUNK = 256 * 1024;

async function openFile(path: string, what: string): Promise<FileHandle> {
  try {
    return await open(path, 'r');
  } catch (e) {
    throw noInput(what, `cannot read (${(e as NodeJS.ErrnoException).code})`);
  }
}

/**
 * Convert one IMA message: a stored message directory (read from its files),
 * a .ima file or stdin (spooled: the tar order is not the MIME order).
 */
async function convert(what: string | undefined, io: Io, job: Job, write: (parts: MessageParts, store: SpoolStore) => Promise<void>): Promise<void> {
  const store = new SpoolStore({ dir: job.spoolDir });
  try {
    let parts: MessageParts | undefined;
    if (what) {
      const path = resolve(io.cwd, what);
      const st = await lstat(path).catch((e: NodeJS.ErrnoException) => {
        throw noInput(what, e.code === 'ENOENT' ? 'no such file or directory' : `cannot read (${e.code})`);
      });
      if (st.isDirectory()) parts = await messageDirParts(path, job.limits);
      else if (st.isFile()) {
        // Read into buffers that go back to the pool as the spooling gets past them: no trail of dead ones.
        const reader = new InOrderReader(await openFile(path, what), new BufferPool(INPUT_CHUNK));
        // readMessage reports the input's errors while it reads; it destroys the input with its own error when it stops early, after it stopped listening.
        reader.stream.on('error', () => {});
        parts = await spoolIma(reader.stream, store, job.limits, (offset) => reader.release(offset));
      }
    }
    parts ??= await spoolIma(await openInput(what, io), store, job.limits);
    await write(parts, store);
  } catch (e) {
    // A message that breaks ima-message(5) is bad input here, not a refused delivery.
    if (e instanceof MessageError) throw dataError(`${what ?? 'stdin'}: ${e.message}`);
    throw e;
  } finally {
    await store.dispose();
  }
}

/** Store each message in the Maildir; a bad message is reported and skipped, trouble on this machine stops the run. */
async function toMaildir(dir: string, inputs: (string | undefined)[], io: Io, job: Job, log: Log): Promise<number> {
  const maildir = await Maildir.open(dir);
  let code: number = EXIT.OK;
  for (const what of inputs) {
    const label = what ?? 'stdin';
    try {
      await convert(what, io, job, async (parts, store) => {
        const stored = await maildir.deliver(messageName(parts.headers), async (out: Writable) => {
          await writeMime(parts, out, { ...job.opts, readBuffers: store.readBuffers });
        });
        log.debug(`${label}: ${stored ? 'stored' : 'already in the Maildir'}`);
      });
    } catch (e) {
      const f = e instanceof Failure ? e : asFailure(e, dir);
      if (f.temporary || f.kind === 'cantcreat') throw f;
      log.error(`${label}: ${f.message}`);
      code = f.kind === 'permanent' ? EXIT.DATAERR : f.exitCode;
    }
  }
  return code;
}

export async function main(args: string[], io: Io): Promise<number> {
  const s = await start({ name: 'ima-to-mime', role: 'user', usage: '$0 [options] [MESSAGE]\n$0 --maildir DIR [MESSAGE...]', schema, options }, args, io);
  if (typeof s === 'number') return s;
  const { argv, config, log, source } = s;
  const inputs = argv._.map(String);
  const dir = argv.maildir ?? (config.maildir || undefined);
  if (!dir && inputs.length > 1) throw usageError('more than one MESSAGE needs --maildir DIR');
  const job: Job = {
    limits: { ...DEFAULT_LIMITS, maxTotalBytes: config.max_message_bytes, maxHeaderBytes: config.max_header_bytes, maxEntries: config.max_entries },
    spoolDir: config.spool_dir ? resolve(source.dir, config.spool_dir) : undefined,
    opts: { newline: argv.crlf || config.newline === 'crlf' ? 'crlf' : 'lf', keepBcc: argv.bcc ?? config.keep_bcc },
  };
  if (dir) return toMaildir(resolve(io.cwd, dir), inputs.length ? inputs : [undefined], io, job, log);
  try {
    await convert(inputs[0], io, job, async (parts, store) => {
      await writeMime(parts, io.stdout, { ...job.opts, readBuffers: store.readBuffers });
    });
  } catch (e) {
    // A reader that stops early (| head) is its choice, not our failure.
    if ((e as { message?: string }).message?.startsWith('EPIPE') || (e as NodeJS.ErrnoException).code === 'EPIPE') return EXIT.OK;
    throw e;
  }
  return EXIT.OK;
}
