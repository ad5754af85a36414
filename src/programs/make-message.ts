// make-message: build an IMA message from text, attachments and metadata,
// and write it to stdout or a file.
//
// It does not send anything (send-mail does), does not read MIME (that is
// smtp-receive), and writes nothing at all unless every input checked out:
// a failure never leaves half a message.
import { randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { access, constants, stat } from 'node:fs/promises';
import { basename, resolve } from 'node:path';
import type { Writable } from 'node:stream';
import type { ArgumentsCamelCase, Argv } from 'yargs';
import { type Address, AddressError, addressKey, formatAddress, formatAddressList, parseAddress, parseAddressList } from '../address.js';
import { start } from '../cli.js';
import { type Located, list, map, optional, size, string, table } from '../config.js';
import { EXIT, configError, dataError, noInput, usageError } from '../failure.js';
import { writeFileAtomic } from '../files.js';
import { Headers, MessageError, type Part, checkAttachmentName, checkField, writeMessage } from '../message/index.js';
import type { Io } from '../io.js';
import { BufferPool, Spool, SpoolLimitError, handingBack, pooledReader, writesThrough } from '../spool.js';
import { Utf8Checker } from '../message/utf8.js';

const schema = table({
  from: optional(string(), undefined as string | undefined),
  always_bcc: optional(list(string()), [] as string[]),
  headers: map(string()),
  max_body_bytes: optional(size({ min: 1 }), 64 * 1024 * 1024),
});
type Config = ReturnType<typeof schema.parse>;

const options = (y: Argv) =>
  y
    .option('from', { alias: 'r', type: 'string', describe: 'Sender address (default: from in the config)', requiresArg: true })
    .option('to', { alias: 't', type: 'string', describe: 'Recipient; repeatable or a comma list', requiresArg: true })
    .option('cc', { alias: 'c', type: 'string', describe: 'Carbon-copy recipient; repeatable or a comma list', requiresArg: true })
    .option('bcc', { alias: 'b', type: 'string', describe: 'Blind-copy recipient; repeatable or a comma list', requiresArg: true })
    .option('subject', { alias: 's', type: 'string', describe: 'Subject line', requiresArg: true })
    .option('attach', { alias: 'a', type: 'string', describe: 'Attach FILE under its own name; repeatable', requiresArg: true })
    .option('attach-as', { type: 'string', describe: 'Attach FILE under NAME, given as NAME=FILE; repeatable', requiresArg: true })
    .option('body-file', { alias: 'f', type: 'string', describe: 'Read the text from FILE instead of stdin', requiresArg: true })
    .option('text', { type: 'string', describe: 'Use TEXT as the message text instead of stdin', requiresArg: true })
    .option('html-file', { type: 'string', describe: 'Add FILE as the HTML alternative (body.html)', requiresArg: true })
    .option('body', { type: 'boolean', default: true, describe: 'Read the text; --no-body makes a message without text and leaves stdin alone' })
    .option('in-reply-to', { type: 'string', describe: 'Message id this one answers', requiresArg: true })
    .option('references', { type: 'string', describe: 'Message ids of the thread; repeatable', requiresArg: true })
    .option('header', { alias: 'H', type: 'string', describe: 'Extra header NAME=VALUE; repeatable', requiresArg: true })
    .option('date', { type: 'string', describe: 'Date (RFC 3339) instead of now', requiresArg: true })
    .option('message-id', { type: 'string', describe: 'Message id (urn:uuid:...) instead of a new one', requiresArg: true })
    .option('output', { alias: 'o', type: 'string', describe: 'Write to FILE (atomically) instead of stdout', requiresArg: true })
    .option('force', { type: 'boolean', describe: 'Write the binary message to a terminal anyway' })
    .conflicts('text', 'body-file');

type Flags = ArgumentsCamelCase<ReturnType<typeof options> extends Argv<infer A> ? A : never>;

const all = (v: unknown): string[] => (v === undefined ? [] : Array.isArray(v) ? v.map(String) : [String(v)]);

function addresses(values: string[], what: string): Address[] {
  try {
    return values.flatMap((v) => parseAddressList(v));
  } catch (e) {
    if (e instanceof AddressError) throw usageError(`${what}: ${e.message}`);
    throw e;
  }
}

/** Drop repeats of the same address (same local part, same ASCII domain), keeping the first. */
function unique(list: Address[], taken = new Set<string>()): Address[] {
  return list.filter((a) => !taken.has(addressKey(a)) && taken.add(addressKey(a)));
}

function setField(h: Headers, name: string, value: string, what: string): void {
  const bad = checkField(name, value);
  if (bad) throw usageError(`${what}: ${bad}`);
  h.add(name, value);
}

function now(): string {
  return new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** Fields the flags or the servers set, never --header or [headers]. */
const OWN_FIELDS = ['from', 'to', 'cc', 'bcc', 'date', 'message-id', 'mailer', 'received'];

/** The config's own values are checked as config (exit 78, file and key named), not blamed on flags that were never given. */
function check(config: Config, source: Located): void {
  const file = source.file ?? 'make-message.toml';
  const addressProblem = (text: string) => {
    try {
      parseAddress(text);
      return undefined;
    } catch (e) {
      return (e as Error).message;
    }
  };
  const fromProblem = config.from === undefined ? undefined : addressProblem(config.from);
  if (fromProblem) throw configError(file, 'from', fromProblem);
  config.always_bcc.forEach((a, i) => {
    const problem = addressProblem(a);
    if (problem) throw configError(file, `always_bcc[${i}]`, problem);
  });
  for (const [name, value] of Object.entries(config.headers)) {
    const problem = OWN_FIELDS.includes(name.toLowerCase()) ? 'is set by its own flag or by the servers' : checkField(name, value.trim());
    if (problem) throw configError(file, `headers."${name}"`, problem);
  }
}

export function buildHeaders(argv: Flags, config: { from?: string; always_bcc: string[]; headers: Record<string, string> }): Headers {
  const fromText = argv.from ?? config.from;
  if (!fromText) throw usageError('no sender: give --from or set "from" in make-message.toml');
  let from: Address;
  try {
    from = parseAddress(fromText);
  } catch (e) {
    throw usageError(`--from: ${(e as Error).message}`);
  }
  const taken = new Set<string>();
  const to = unique(addresses([...all(argv.to), ...argv._.map(String)], 'recipient'), taken);
  const cc = unique(addresses(all(argv.cc), '--cc'), taken);
  const bcc = unique(addresses([...all(argv.bcc), ...config.always_bcc], '--bcc'), taken);
  if (to.length + cc.length + bcc.length === 0) throw usageError('no recipients: give --to, --cc, --bcc or addresses as arguments');
  const h = new Headers();
  setField(h, 'from', formatAddress(from), '--from');
  if (to.length) setField(h, 'to', formatAddressList(to), '--to');
  if (cc.length) setField(h, 'cc', formatAddressList(cc), '--cc');
  if (bcc.length) setField(h, 'bcc', formatAddressList(bcc), '--bcc');
  if (argv.subject !== undefined) setField(h, 'subject', argv.subject.trim(), '--subject');
  setField(h, 'date', argv.date ?? now(), '--date');
  setField(h, 'message-id', argv.messageId ?? `urn:uuid:${randomUUID()}`, '--message-id');
  if (argv.inReplyTo !== undefined) setField(h, 'in-reply-to', argv.inReplyTo, '--in-reply-to');
  const refs = all(argv.references)
    .flatMap((r) => r.split(/\s+/))
    .filter(Boolean);
  if (refs.length) setField(h, 'references', refs.join(' '), '--references');
  const extra: [string, string][] = [...Object.entries(config.headers), ...all(argv.header).map((kv) => splitPair(kv, '--header', 'NAME=VALUE'))];
  for (const [name, value] of extra) {
    if (OWN_FIELDS.includes(name)) {
      throw usageError(`--header: "${name}" is set by its own flag or by the servers, not with --header`);
    }
    if (h.has(name) && ['subject', 'in-reply-to', 'references'].includes(name)) h.remove(name);
    setField(h, name, value.trim(), '--header');
  }
  return h;
}

function splitPair(kv: string, flag: string, form: string): [string, string] {
  const eq = kv.indexOf('=');
  if (eq <= 0) throw usageError(`${flag} ${JSON.stringify(kv)}: expected ${form}`);
  return [kv.slice(0, eq).trim().toLowerCase(), kv.slice(eq + 1)];
}

/** Check a file is a readable regular file now, so nothing is written if it is not. */
async function filePart(path: string, cwd: string, flag: string, pool?: BufferPool): Promise<Part> {
  const full = resolve(cwd, path);
  let st;
  try {
    st = await stat(full);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw noInput(`${flag} ${path}`, code === 'ENOENT' ? 'no such file' : `cannot read (${code})`);
  }
  if (!st.isFile()) throw noInput(`${flag} ${path}`, 'not a regular file');
  await access(full, constants.R_OK).catch((e: NodeJS.ErrnoException) => {
    throw noInput(`${flag} ${path}`, `cannot read (${e.code})`);
  });
  return { size: st.size, open: () => (pool ? pooledReader(full, pool) : createReadStream(full)) };
}

async function attachments(argv: Flags, cwd: string, pool: BufferPool): Promise<(Part & { name: string })[]> {
  const wanted = [
    ...all(argv.attach).map((f) => ({ file: f, name: basename(f), flag: '--attach' })),
    ...all(argv.attachAs).map((kv) => {
      const eq = kv.indexOf('=');
      if (eq <= 0) throw usageError(`--attach-as ${JSON.stringify(kv)}: expected NAME=FILE`);
      return { file: kv.slice(eq + 1), name: kv.slice(0, eq), flag: '--attach-as' };
    }),
  ];
  const names = new Set<string>();
  const out: (Part & { name: string })[] = [];
  for (const w of wanted) {
    let name: string;
    try {
      name = checkAttachmentName(w.name);
    } catch (e) {
      if (e instanceof MessageError) throw usageError(`${w.flag} ${w.file}: ${e.message}`);
      throw e;
    }
    if (names.has(name)) throw usageError(`${w.flag} ${w.file}: a second attachment named "${name}" (use --attach-as NAME=FILE)`);
    names.add(name);
    out.push({ name, ...(await filePart(w.file, cwd, w.flag, pool)) });
  }
  return out;
}

/** Read text (stdin or a file) once, checking it is UTF-8, within the size limit. */
async function spoolText(input: AsyncIterable<unknown>, what: string, limit: number): Promise<Spool> {
  const utf8 = new Utf8Checker();
  const notText = () => dataError(`${what}: not valid UTF-8 text`);
  try {
    const spool = await Spool.from(input, {
      limit,
      inspect: (c) => {
        if (!utf8.check(c)) throw notText();
      },
    });
    if (!utf8.end()) throw notText();
    return spool;
  } catch (e) {
    if (e instanceof SpoolLimitError) throw dataError(`${what}: ${e.message} (max_body_bytes)`);
    throw e;
  }
}

export async function main(args: string[], io: Io): Promise<number> {
  const s = await start({ name: 'make-message', role: 'user', usage: '$0 [options] [recipient...] < text', schema, options, check }, args, io);
  if (typeof s === 'number') return s;
  const { argv, config } = s;
  const limit = config.max_body_bytes;
  const headers = buildHeaders(argv, config);
  // Attachments are read into buffers that a file or stdout hands back once written (see BufferPool).
  const pool = new BufferPool(256 * 1024);
  const atts = await attachments(argv, io.cwd, pool);
  if (!argv.output && (io.stdout as { isTTY?: boolean }).isTTY && !argv.force) {
    throw usageError('refusing to write a binary message to a terminal: use --output FILE, a pipe, or --force');
  }
  const spools: Spool[] = [];
  try {
    let body: Part | undefined;
    if (argv.text !== undefined) body = { size: Buffer.byteLength(argv.text), open: () => Buffer.from(argv.text!) };
    else if (argv.body !== false) {
      if (argv.bodyFile) await filePart(argv.bodyFile, io.cwd, '--body-file');
      const source = argv.bodyFile ? createReadStream(resolve(io.cwd, argv.bodyFile)) : io.stdin;
      const spool = await spoolText(source, argv.bodyFile ? `--body-file ${argv.bodyFile}` : 'stdin', limit);
      spools.push(spool);
      body = spool;
    }
    let bodyHtml: Part | undefined;
    if (argv.htmlFile) {
      await filePart(argv.htmlFile, io.cwd, '--html-file');
      const spool = await spoolText(createReadStream(resolve(io.cwd, argv.htmlFile)), `--html-file ${argv.htmlFile}`, limit);
      spools.push(spool);
      bodyHtml = spool;
    }
    const parts = { headers, body, bodyHtml, attachments: atts };
    const dest = (out: Writable) => (writesThrough(out) ? handingBack(out, pool) : out);
    if (argv.output) await writeFileAtomic(resolve(io.cwd, argv.output), (out) => writeMessage(dest(out), parts));
    else await writeMessage(dest(io.stdout), parts);
  } finally {
    for (const sp of spools) await sp.dispose();
  }
  return EXIT.OK;
}
