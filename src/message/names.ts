// The names an entry may have: headers, body, body.html, attachments/NAME.
import { MAX_NAME_BYTES, MessageError } from './limits.js';

export const ATTACHMENTS = 'attachments/';

/** Check an attachment name and return its NFC form; throws MessageError naming the problem. */
export function checkAttachmentName(name: string): string {
  const n = name.normalize('NFC');
  const show = JSON.stringify(name);
  if (n === '') throw new MessageError('attachment with an empty name');
  if (n.includes('\0')) throw new MessageError(`attachment name ${show} contains NUL`);
  if (n.includes('/')) throw new MessageError(`attachment name ${show} contains "/"`);
  if (n === '.' || n === '..') throw new MessageError(`attachment name ${show} is not a file name`);
  if (/[\x00-\x1f\x7f\u{FFFD}]/u.test(n)) throw new MessageError(`attachment name ${show} contains a control character or invalid UTF-8`);
  if (Buffer.byteLength(n) > MAX_NAME_BYTES) throw new MessageError(`attachment name ${show} is longer than ${MAX_NAME_BYTES} bytes`);
  return n;
}

export type EntryKind = 'headers' | 'body' | 'body.html' | 'attachment';

/** Classify a tar entry name; anything outside the list is an error. */
export function classifyPath(path: string): { kind: EntryKind; name: string } {
  if (path === 'headers' || path === 'body' || path === 'body.html') return { kind: path, name: path };
  if (path.startsWith(ATTACHMENTS)) return { kind: 'attachment', name: checkAttachmentName(path.slice(ATTACHMENTS.length)) };
  const show = JSON.stringify(path);
  if (path.startsWith('/')) throw new MessageError(`entry ${show}: absolute name`);
  if (path.split('/').includes('..')) throw new MessageError(`entry ${show}: ".." in name`);
  throw new MessageError(`entry ${show}: not a message part (headers, body, body.html, attachments/NAME)`);
}

/** Canonical order: headers, body, body.html, then attachments by the bytes of their names. */
export function compareNames(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}
