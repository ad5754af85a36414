// queue-mail: put a message durably into the outgoing queue and print its
// queue id; run-queue(1) delivers it.
//
// It does not deliver, look up domains or talk to the network: it checks the
// message as every reader does, gives it a date and message-id when it has
// none (so every retry is the same message, and mailboxes dedupe it), and
// answers only after the message and its state are fsync'ed.
import type { Argv } from 'yargs';
import { type Address, AddressError, addressKey, mailboxOf, parseAddress, parseAddressList } from '../address.js';
import { openInput, start } from '../cli.js';
import { configPath, optional, size, string, table } from '../config.js';
import { EXIT, dataError, usageError } from '../failure.js';
import type { Io } from '../io.js';
import { DEFAULT_LIMITS, type Headers, MessageError, type OutEntry, mtimeOf, readMessage, writeEntries } from '../message/index.js';
import { newState } from '../queue/state.js';
import { DirQueue, newQueueId } from '../queue/store.js';
import { randomUUID } from 'node:crypto';

const schema = table({
  queue_dir: optional(string({ nonEmpty: true }), '/var/spool/ima/queue'),
  max_message_bytes: optional(size({ min: 1024 }), 100 * 1024 * 1024),
});

const options = (y: Argv) =>
  y.option('recipient', { type: 'string', describe: 'Deliver to this address instead of the header recipients (an envelope); repeatable', requiresArg: true });

export async function main(args: string[], io: Io): Promise<number> {
  const s = await start({ name: 'queue-mail', role: 'server', usage: '$0 [--recipient ADDRESS]... [FILE] < message', schema, options }, args, io);
  if (typeof s === 'number') return s;
  const { argv, config, source, log } = s;
  if (argv._.length > 1) throw usageError('give at most one message file');
  const envelope = argv.recipient === undefined ? undefined : envelopeOf(([] as string[]).concat(argv.recipient));
  const input = await openInput(argv._[0] === undefined ? undefined : String(argv._[0]), io);
  const store = await new DirQueue(configPath(source, config.queue_dir)).init();
  const entries = readMessage(input, { ...DEFAULT_LIMITS, maxTotalBytes: config.max_message_bytes });
  try {
    const first = await entries.next();
    if (first.done || first.value.kind !== 'headers') throw dataError('message has no headers entry');
    const headers = complete(first.value.headers);
    const recipients =
      envelope ??
      addresses(
        ['to', 'cc', 'bcc'].flatMap((f) => headers.getAll(f)),
        'headers',
        dataError,
      );
    if (recipients.length === 0) throw dataError('the message has no recipients (to, cc, bcc) and none was given with --recipient');
    const id = newQueueId();
    async function* all(): AsyncGenerator<OutEntry> {
      const raw = headers.serialize();
      yield { path: 'headers', size: raw.length, open: () => raw };
      for await (const e of entries) if (e.kind !== 'headers') yield { path: e.path, size: e.size, open: () => e.stream };
    }
    await store.add(
      id,
      (out) => writeEntries(out, all(), mtimeOf(headers)),
      (bytes) =>
        newState({
          id,
          arrival: Date.now(),
          size: bytes,
          sender: senderOf(headers),
          messageId: headers.get('message-id')!,
          subject: headers.get('subject') ?? '',
          notice: headers.get('notice') ?? '',
          recipients: recipients.map(mailboxOf),
        }),
    );
    log.debug(`${id}: queued for ${recipients.length} recipients`);
    io.stdout.write(`${id}\n`);
    return EXIT.OK;
  } catch (e) {
    if (e instanceof MessageError) throw dataError(e.message);
    throw e;
  }
}

/** The date and message-id every retry must carry, set once here. */
function complete(given: Headers): Headers {
  const h = given.clone();
  if (!h.has('date')) h.set('date', new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'));
  if (!h.has('message-id')) h.set('message-id', `urn:uuid:${randomUUID()}`);
  return h;
}

/** Who failure notices go to: nobody for a notice (no loops), else the from address. */
function senderOf(h: Headers): string {
  const from = h.get('from');
  if (h.has('notice') || !from) return '';
  return mailboxOf(parseAddress(from));
}

/** The --recipient addresses. One naming no address ("", " , ") is a bad command line, not a message without recipients. */
function envelopeOf(given: string[]): Address[] {
  const blank = given.find((t) => /^[\s,]*$/.test(t));
  if (blank !== undefined) throw usageError(`--recipient ${JSON.stringify(blank)}: no address`);
  return addresses(given, '--recipient', usageError);
}

function addresses(texts: string[], what: string, fail: (m: string) => Error): Address[] {
  const seen = new Set<string>();
  try {
    return texts.flatMap((t) => parseAddressList(t)).filter((a) => !seen.has(addressKey(a)) && seen.add(addressKey(a)));
  } catch (e) {
    if (e instanceof AddressError) throw fail(`${what}: ${e.message}`);
    throw e;
  }
}
