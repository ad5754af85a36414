// The notice run-queue sends a sender when recipients finally fail (or,
// optionally, are long delayed): an ordinary IMA message made with the
// message writer, with a `notice` header and a state with no sender, so a
// notice that itself fails is never answered with another (no loops).
// Its message-id is derived from what it reports, so the same notice sent
// again after a crash is stored once by the mailbox's dedupe.
import { PassThrough, type Readable } from 'node:stream';
import { Headers, bufferPart, readMessage, writeMessage } from '../message/index.js';
import { uuidV5 } from '../mime/uuid.js';
import type { MessageState, Recipient } from './state.js';

/** The namespace of notice message-ids (a fixed random UUID). */
const NOTICE_NAMESPACE = '8d0f3c2e-5b7a-4c61-9e2f-1a4b6c8d0e21';

export type NoticeKind = 'failure' | 'delay';

/** The original message's headers entry (the notice attaches it), or empty when it cannot be read. */
export async function originalHeaders(input: Readable): Promise<Buffer> {
  try {
    for await (const e of readMessage(input)) if (e.kind === 'headers') return e.raw;
  } catch {
    // A message we cannot read any more: the notice says so instead.
  }
  return Buffer.alloc(0);
}

const clip = (s: string, n: number) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

export interface NoticeOptions {
  kind: NoticeKind;
  /** The message reported on: what run-queue's state says of it, or smtp-receive's account of a message it took. */
  state: Pick<MessageState, 'id' | 'sender' | 'subject' | 'message_id' | 'arrival'>;
  recipients: Pick<Recipient, 'address' | 'last_reply' | 'attempts'>[];
  headers: Buffer;
  from: string;
  now: number;
  /** When run-queue gives up (for a delay warning). */
  giveUpAt: number;
  /** Where the message was (default: the queue, under its queue id). */
  arrivalLine?: string;
}

export async function buildNotice(o: NoticeOptions): Promise<Buffer> {
  const s = o.state;
  const h = new Headers();
  const subject = s.subject ? clip(s.subject.replace(/\s+/g, ' ').trim(), 200) : '(no subject)';
  const what = o.kind === 'failure' ? 'Undelivered' : 'Delayed';
  h.add('from', `Mail Delivery System <${o.from}>`);
  h.add('to', s.sender);
  h.add('subject', `${what}: ${subject}`);
  h.add('date', new Date(o.now).toISOString().replace(/\.\d{3}Z$/, 'Z'));
  const reported = o.recipients.map((r) => r.address).join(' ');
  h.add('message-id', `urn:uuid:${uuidV5(NOTICE_NAMESPACE, `${s.id} ${o.kind} ${reported}`)}`);
  if (/^urn:uuid:/.test(s.message_id)) {
    h.add('in-reply-to', s.message_id);
    h.add('references', s.message_id);
  }
  h.add('notice', o.kind);
  h.add('auto-submitted', 'auto-replied');
  const body = Buffer.from(bodyText(o));
  const attachments = o.headers.length ? [{ name: 'original-headers.txt', ...bufferPart(o.headers) }] : [];
  const out = new PassThrough();
  const parts: Buffer[] = [];
  out.on('data', (c: Buffer) => parts.push(c));
  await writeMessage(out, { headers: h, body: bufferPart(body), attachments });
  return Buffer.concat(parts);
}

function bodyText(o: NoticeOptions): string {
  const s = o.state;
  const lines =
    o.kind === 'failure'
      ? ['Your message could not be delivered to the recipients below, and will not be retried.']
      : [
          `Your message has not yet been delivered to the recipients below. Delivery will be retried until ${new Date(o.giveUpAt).toISOString()};`,
          'you need not send it again.',
        ];
  lines.push('', `Subject: ${s.subject || '(no subject)'}`, o.arrivalLine ?? `Queued:  ${s.arrival} (queue id ${s.id})`, '');
  for (const r of o.recipients) lines.push(`${r.address}: ${r.last_reply || '(no reply)'} (${r.attempts} attempt${r.attempts === 1 ? '' : 's'})`);
  lines.push('', o.headers.length ? "The message's headers are attached." : "The message's headers could not be read.");
  return `${lines.join('\n')}\n`;
}
