// Conversions in-process for the MIME tests, and an IMA message read into a
// plain object a test can compare.
import { PassThrough, Readable, type Writable } from 'node:stream';
import { DEFAULT_LIMITS, type MessageLimits, readMessage } from '../../src/message/index.js';
import { type MimeToImaOptions, mimeToIma } from '../../src/mime/to-ima.js';
import { type ImaToMimeOptions, imaToMime } from '../../src/mime/to-mime.js';

async function collect(write: (out: Writable) => Promise<unknown>): Promise<Buffer> {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  await write(out);
  return Buffer.concat(chunks);
}

export const toIma = (mime: Buffer | string, opts: MimeToImaOptions = {}) => collect((out) => mimeToIma(Readable.from([Buffer.from(mime)]), out, opts));
export const toMime = (ima: Buffer, opts: ImaToMimeOptions = { keepBcc: true }) => collect((out) => imaToMime(Readable.from([ima]), out, opts));

export interface ReadIma {
  headers: Record<string, string[]>;
  headerText: string;
  files: Map<string, Buffer>;
}

/** Entries of an IMA message: headers by name (every value), every other entry's bytes by path. */
export async function readIma(ima: Buffer, limits: MessageLimits = DEFAULT_LIMITS): Promise<ReadIma> {
  const out: ReadIma = { headers: {}, headerText: '', files: new Map() };
  for await (const e of readMessage(Readable.from([ima]), limits)) {
    if (e.kind === 'headers') {
      out.headerText = e.raw.toString();
      for (const f of e.headers.fields) (out.headers[f.name] ??= []).push(f.value);
      continue;
    }
    const parts: Buffer[] = [];
    for await (const c of e.stream) parts.push(c as Buffer);
    out.files.set(e.path, Buffer.concat(parts));
  }
  return out;
}

/** One header's single value. */
export const one = (m: ReadIma, name: string) => m.headers[name]?.[0];

/** A MIME message from header lines and a body, CRLF line ends. */
export function mime(headers: string[], body: string): Buffer {
  return Buffer.from([...headers, '', body].join('\r\n'));
}
