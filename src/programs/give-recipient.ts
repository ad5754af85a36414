// give-recipient: store one message durably into one mailbox.
//
// It does not route (handle-incoming-mail does), does not talk to the
// network, and never reports OK before every file, directory and the
// rename into new/ are fsync'ed. It only ever writes inside the mailbox.
import { isAbsolute, resolve } from 'node:path';
import type { Argv } from 'yargs';
import { type Address, AddressError, mailboxOf, parseAddress } from '../address.js';
import { openInput, start } from '../cli.js';
import { mailboxPathProblem, boolean, duration, integer, optional, size, string, table } from '../config.js';
import { EXIT, Failure, asFailure, usageError } from '../failure.js';
import { cleanTmp, deliverToMailbox } from '../mailbox.js';
import { DEFAULT_LIMITS } from '../message/index.js';
import type { Io } from '../io.js';

const schema = table({
  mailbox: optional(
    string({
      check: (s) =>
        s === ''
          ? undefined
          : s.includes('{') && !/\{(local|domain|address)\}/.test(s)
            ? 'unknown placeholder (use {local}, {domain}, {address})'
            : mailboxPathProblem(s, true),
    }),
    '',
  ),
  create: optional(boolean(), false),
  tmp_max_age: optional(duration({ timer: false }), 36 * 3600 * 1000),
  max_message_bytes: optional(size({ min: 1024 }), 1024 ** 3),
  max_header_bytes: optional(size({ min: 256 }), DEFAULT_LIMITS.maxHeaderBytes),
  max_entries: optional(integer({ min: 1 }), DEFAULT_LIMITS.maxEntries),
});

const options = (y: Argv) =>
  y
    .option('address', { type: 'string', describe: 'The recipient (for the result line and bcc privacy) when a MAILBOX is named', requiresArg: true })
    .option('create', { type: 'boolean', describe: 'Create the mailbox if it is missing' })
    .option('clean', { type: 'boolean', describe: 'Only remove stale leftovers in tmp/ and exit' });

/** Fill the mailbox template; the address parser already made local and domain path-safe. */
function mailboxFor(template: string, a: Address): string {
  return template.replace(/\{(local|domain|address)\}/g, (_, k: string) =>
    k === 'local' ? a.local : k === 'domain' ? a.asciiDomain : `${a.local}@${a.asciiDomain}`,
  );
}

function toAddress(text: string, what: string): Address {
  try {
    return parseAddress(text);
  } catch (e) {
    if (e instanceof AddressError) throw usageError(`${what}: ${e.message}`);
    throw e;
  }
}

export async function main(args: string[], io: Io): Promise<number> {
  const s = await start(
    { name: 'give-recipient', role: 'server', notAsRoot: true, usage: '$0 [--address ADDRESS] MAILBOX [FILE]\n$0 ADDRESS [FILE]', schema, options },
    args,
    io,
  );
  if (typeof s === 'number') return s;
  const { argv, config, log } = s;
  const [target, file, ...extra] = argv._.map(String);
  if (!target || extra.length) throw usageError('expected MAILBOX or ADDRESS, then optionally FILE');

  // A target with "@" and no "/" is an address, looked up through the mailbox template.
  let recipient: Address | undefined;
  let dir: string;
  if (target.includes('@') && !target.includes('/')) {
    recipient = toAddress(target, 'address');
    if (!config.mailbox) throw usageError(`${target}: an address needs "mailbox" in give-recipient.toml to find its mailbox`);
    dir = resolve(io.cwd, mailboxFor(config.mailbox, recipient));
  } else {
    dir = resolve(io.cwd, target);
    if (argv.address) recipient = toAddress(argv.address, '--address');
  }
  if (!isAbsolute(dir)) throw usageError(`${dir}: mailbox path is not absolute`);
  if (argv.clean) {
    const n = await cleanTmp(dir, config.tmp_max_age);
    // Nothing to say when nothing was removed: run from cron, any output is a mail to the operator.
    if (n) log.info(`${dir}: removed ${n} stale entries from tmp/`);
    return EXIT.OK;
  }

  const who = recipient ? mailboxOf(recipient) : dir;
  // Before any delivery: a FILE that is missing, unreadable or a directory is exit 66 (ima(7)), not trouble worth retrying.
  const input = await openInput(file, io);
  try {
    const limits = { ...DEFAULT_LIMITS, maxTotalBytes: config.max_message_bytes, maxHeaderBytes: config.max_header_bytes, maxEntries: config.max_entries };
    const r = await deliverToMailbox(dir, input, { recipient, limits, create: argv.create ?? config.create });
    log.debug(`${who}: ${r.duplicate ? 'already stored' : 'stored'} as ${r.id}`);
    // Someone reused an id (by accident, or to have a message dropped as a duplicate): kept, and said.
    if (r.conflict && !r.duplicate) log.warn(`${who}: message-id ${r.messageId} is already stored with other content: stored as ${r.id}`);
    // Opportunistic clean-up, rarely, so a busy mailbox pays almost nothing for it.
    if (Math.random() < 0.01) await cleanTmp(dir, config.tmp_max_age).catch(() => 0);
    io.stdout.write(`OK ${who}\n`);
    return EXIT.OK;
  } catch (e) {
    const f = e instanceof Failure ? e : asFailure(e, dir);
    if (f.kind === 'usage' || f.kind === 'config' || f.kind === 'noinput') throw f;
    const word = f.temporary ? 'TEMPFAIL' : 'FAIL';
    io.stdout.write(`${word} ${who} ${f.status} ${oneLineReason(f.message)}\n`);
    log.error(`${who}: ${f.message}`);
    return f.temporary ? EXIT.TEMPFAIL : EXIT.FAIL;
  }
}

const oneLineReason = (s: string) => s.replace(/[\x00-\x1f\x7f]+/g, ' ');
