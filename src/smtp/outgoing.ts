// The message smtp-send sends: the IMA message read and checked as every
// reader does, its MIME form (ima-mime(7), CRLF, no bcc) spooled once, and
// the DKIM signatures of the author domain's keys in front; a fresh stream of
// it for every host tried; a second form in 7bit, made only for a server
// without 8BITMIME. Memory stays flat: parts and MIME spool to files.
import { PassThrough, Readable } from 'node:stream';
import { type Address, AddressError, parseAddressList } from '../address.js';
import { dataError } from '../failure.js';
import { DEFAULT_LIMITS, type Headers, MessageError, type MessageParts } from '../message/index.js';
import { type MimeWritten, spoolIma, writeMime } from '../mime/to-mime.js';
import { Spool, SpoolLimitError, type SpoolStore } from '../spool.js';
import { type DkimKey, dkimSignatures, keysFor } from './dkim.js';
import { type Message, asStream } from './send.js';

export interface Outgoing {
  headers: Headers;
  message: Message;
  dispose(): Promise<void>;
}

export interface OutgoingOptions {
  /** Parts spool here. */
  store: SpoolStore;
  /** The largest IMA message; its MIME form may be twice that. */
  maxBytes: number;
  spoolDir?: string;
  /** Every configured DKIM key; those of the from domain sign. */
  keys: readonly DkimKey[];
}

export async function outgoing(input: Readable, o: OutgoingOptions): Promise<Outgoing> {
  let parts: MessageParts;
  try {
    parts = await spoolIma(input, o.store, { ...DEFAULT_LIMITS, maxTotalBytes: o.maxBytes });
  } catch (e) {
    if (e instanceof MessageError) throw dataError(`message: ${e.message}`);
    throw e;
  }
  if (!parts.headers) throw dataError('message: no headers entry');
  // DKIM signs for the author's domain (the From header), which DMARC aligns with.
  const author = firstAddress(parts.headers, 'from')?.asciiDomain;
  const keys = author ? keysFor(o.keys, author) : [];
  const spools: Spool[] = [];
  const dispose = async () => {
    await Promise.all(spools.splice(0).map((s) => s.dispose()));
  };
  try {
    const form = await signedForm(parts, o, keys, false, spools);
    // Made only for a server without 8BITMIME, once, and only when the usual form has 8bit in it.
    let sevenBit: Promise<Message> | undefined;
    if (form.eightBit) form.sevenBit = () => (sevenBit ??= signedForm(parts, o, keys, true, spools));
    return { headers: parts.headers, message: form, dispose };
  } catch (e) {
    await dispose();
    throw e;
  }
}

/** The MIME form of parts spooled (kept in spools, for the caller to dispose of), with its DKIM signatures in front. */
async function signedForm(parts: MessageParts, o: OutgoingOptions, keys: readonly DkimKey[], sevenBit: boolean, spools: Spool[]): Promise<Message> {
  const pipe = new PassThrough();
  let spool: Spool;
  let written: MimeWritten;
  try {
    [spool, written] = await Promise.all([
      Spool.from(pipe, { limit: o.maxBytes * 2, dir: o.spoolDir }),
      writeMime(parts, pipe, { newline: 'crlf', keepBcc: false, sevenBit }),
    ]);
  } catch (e) {
    pipe.destroy();
    if (e instanceof SpoolLimitError) throw dataError(`message: its MIME form is larger than ${o.maxBytes * 2} bytes`);
    throw e;
  }
  spools.push(spool);
  const signatures = Buffer.from(await dkimSignatures(keys, asStream(spool.open())));
  return { size: signatures.length + spool.size, ...written, open: () => joined(signatures, spool) };
}

function firstAddress(headers: Headers, field: string): Address | undefined {
  const value = headers.get(field);
  if (!value) return undefined;
  try {
    return parseAddressList(value)[0];
  } catch (e) {
    if (e instanceof AddressError) throw dataError(`${field}: ${e.message}`);
    throw e;
  }
}

/**
 * The envelope sender a message implies: its from, or the null sender (null)
 * for a notice. A notice is marked by its `notice` header, as run-queue and
 * smtp-receive make it; RFC 5321 4.5.5 wants it sent from <> so that a notice
 * that fails is never answered with another. Deciding here, not in each
 * caller, covers send-mail's legacy command and anyone piping a notice in.
 */
export function senderOf(headers: Headers): Address | null {
  if (headers.has('notice')) return null;
  const from = firstAddress(headers, 'from');
  if (!from) throw dataError('the message has no from: give --from ADDRESS (or --from "" for the null sender)');
  return from;
}

function joined(head: Buffer, spool: Spool): Readable {
  return Readable.from(
    (async function* () {
      if (head.length) yield head;
      const rest = spool.open();
      if (Buffer.isBuffer(rest)) yield rest;
      else yield* rest as AsyncIterable<Buffer>;
    })(),
  );
}
