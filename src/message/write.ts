// The canonical streaming writer. The same content always gives the same
// bytes: fixed order (headers, body, body.html, attachments by name), fixed
// mode, owner and time (the message's `date`), pax headers only where a
// name needs them. Data is streamed; sizes must be known up front, as tar
// needs them before the data.
import { once } from 'node:events';
import type { Readable, Writable } from 'node:stream';
import tar from 'tar-stream';
import { chunksOf } from '../streams.js';
import type { Headers } from './headers.js';
import { dateTimeMs } from './date.js';
import { MessageError } from './limits.js';
import { ATTACHMENTS, checkAttachmentName, classifyPath, compareNames } from './names.js';

/** One entry's data: bytes in hand, or a stream opened only when it is written. */
export interface Part {
  size: number;
  open(): Readable | Buffer;
}

export interface OutEntry extends Part {
  path: string;
}

export interface MessageParts {
  headers: Headers;
  body?: Part;
  bodyHtml?: Part;
  attachments?: ReadonlyArray<Part & { name: string }>;
}

export const bufferPart = (buf: Buffer): Part => ({ size: buf.length, open: () => buf });

/** Entries of a message in canonical order. */
export function canonicalEntries(parts: MessageParts): OutEntry[] {
  const raw = parts.headers.serialize();
  const out: OutEntry[] = [{ path: 'headers', ...bufferPart(raw) }];
  // Parts may be class instances (a Spool): call open() on them, do not spread them.
  const entry = (path: string, p: Part): OutEntry => ({ path, size: p.size, open: () => p.open() });
  if (parts.body) out.push(entry('body', parts.body));
  if (parts.bodyHtml) out.push(entry('body.html', parts.bodyHtml));
  const atts = (parts.attachments ?? []).map((a) => ({ ...a, name: checkAttachmentName(a.name) }));
  atts.sort((a, b) => compareNames(a.name, b.name));
  for (const a of atts) out.push(entry(ATTACHMENTS + a.name, a));
  return out;
}

function mtimeOf(headers: Headers): Date {
  const t = dateTimeMs(headers.get('date') ?? '');
  return new Date(Number.isNaN(t) ? 0 : Math.floor(t / 1000) * 1000);
}

async function writeEntry(pack: tar.Pack, e: OutEntry, mtime: Date): Promise<void> {
  const sink = pack.entry({ name: e.path, size: e.size, mode: 0o644, mtime, type: 'file', uid: 0, gid: 0, uname: '', gname: '' });
  const finished = new Promise<void>((res, rej) => {
    sink.on('finish', () => res());
    sink.on('error', rej);
    sink.on('close', () => res());
  });
  finished.catch(() => {}); // awaited below; on an early throw the pack's destruction rejects it
  const data = e.open();
  if (Buffer.isBuffer(data)) {
    if (data.length !== e.size) throw new MessageError(`${e.path}: ${data.length} bytes where ${e.size} were announced`);
    sink.end(data);
  } else {
    let n = 0;
    for await (const chunk of chunksOf(data)) {
      n += chunk.length;
      if (n > e.size) {
        data.destroy();
        throw new MessageError(`${e.path}: more than the ${e.size} bytes announced (file changed while being read?)`);
      }
      if (!sink.write(chunk)) await Promise.race([once(sink, 'drain'), finished]);
      if (sink.destroyed) {
        data.destroy();
        throw new Error(`${e.path}: the message stream closed while writing`);
      }
    }
    if (n !== e.size) throw new MessageError(`${e.path}: ${n} bytes where ${e.size} were announced (file changed while being read?)`);
    (sink as unknown as { end(): void }).end();
  }
  await finished;
}

/**
 * Write entries as a message to `out`, which is ended afterwards. Entries are
 * written in the order given (use canonicalEntries for canonical output);
 * headers must come first and no path may repeat.
 */
export async function writeEntries(out: Writable, entries: Iterable<OutEntry> | AsyncIterable<OutEntry>, mtime: Date): Promise<void> {
  const pack = tar.pack();
  const outDone = new Promise<void>((res, rej) => {
    out.on('error', rej);
    out.on('finish', () => res());
    out.on('close', () => res());
  });
  outDone.catch(() => {});
  const piping = (async () => {
    for await (const chunk of pack) {
      if (!out.write(chunk)) await Promise.race([once(out, 'drain'), outDone]);
    }
    out.end();
  })();
  // A failed destination (a peer gone or stalled) must also end the entry being written, which waits on the pack.
  let outFailed: unknown;
  piping.catch((e) => {
    outFailed = e;
    pack.destroy(e as Error);
  });
  const seen = new Set<string>();
  try {
    for await (const e of entries) {
      const { kind } = classifyPath(e.path);
      if (seen.size === 0 && kind !== 'headers') throw new MessageError('the first entry must be "headers"');
      if (seen.has(e.path)) throw new MessageError(`entry ${JSON.stringify(e.path)} appears twice`);
      seen.add(e.path);
      await writeEntry(pack, e, mtime);
    }
    pack.finalize();
    await piping;
    await outDone;
  } catch (err) {
    pack.destroy(err as Error);
    throw outFailed ?? err;
  }
}

/** Write a message in canonical form. */
export async function writeMessage(out: Writable, parts: MessageParts): Promise<void> {
  await writeEntries(out, canonicalEntries(parts), mtimeOf(parts.headers));
}

export { mtimeOf };
