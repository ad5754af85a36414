// The `headers` entry of an IMA message (ima-message(5)): UTF-8, LF line
// ends, one lowercase `name: value` per line, no folding, no encoded-words.
// Known fields are checked strictly; unknown fields are kept as they are.
import { AddressError, parseAddress, parseAddressList, asciiDomain } from '../address.js';
import { isDateTime } from './date.js';
import { MessageError } from './limits.js';

export interface Field {
  name: string;
  value: string;
}

/** Fields that may appear at most once. `received` and unknown fields may repeat. */
const SINGLE = new Set(['from', 'to', 'cc', 'bcc', 'subject', 'date', 'message-id', 'in-reply-to', 'references', 'mailer']);
const NAME = /^[a-z0-9][a-z0-9-]{0,63}$/;
// Any character but C0 controls and DEL.
const BAD_VALUE_CHAR = /[\x00-\x1f\x7f]/;
const UUID_URN = /^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const MESSAGE_REF = /^\S{1,998}$/;

/** Text as a user can read it in a one-line reason: anything but printable ASCII (a byte order mark above all) as \u{HEX}. */
const visible = (text: string) => text.replace(/[^\x20-\x7e]/gu, (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`);

/** Check one field's value by its name; returns a problem or undefined. */
export function checkField(name: string, value: string): string | undefined {
  if (!NAME.test(name)) return `bad header name "${visible(name)}" (lowercase letters, digits and "-")`;
  if (BAD_VALUE_CHAR.test(value)) return `control character in header "${name}"`;
  if (value !== value.trim()) return `leading or trailing space in header "${name}"`;
  try {
    switch (name) {
      case 'from':
        parseAddress(value);
        break;
      case 'to':
      case 'cc':
      case 'bcc':
        parseAddressList(value);
        break;
      case 'date':
        if (!isDateTime(value)) return `date "${value}" is not an RFC 3339 date-time`;
        break;
      case 'message-id':
        if (!UUID_URN.test(value)) return `message-id "${value}" is not a urn:uuid: URN`;
        break;
      case 'in-reply-to':
        if (!MESSAGE_REF.test(value)) return `in-reply-to must be one message id`;
        break;
      case 'references':
        if (!value.split(' ').every((r) => MESSAGE_REF.test(r))) return `references must be message ids separated by single spaces`;
        break;
      case 'mailer':
        asciiDomain(value);
        break;
    }
  } catch (e) {
    if (e instanceof AddressError) return `header "${name}": ${e.message}`;
    throw e;
  }
  return undefined;
}

/** An ordered list of header fields with the lookups every stage needs. */
export class Headers {
  readonly fields: Field[];
  constructor(fields: Field[] = []) {
    this.fields = fields.map((f) => ({ ...f }));
  }
  get(name: string): string | undefined {
    return this.fields.find((f) => f.name === name)?.value;
  }
  getAll(name: string): string[] {
    return this.fields.filter((f) => f.name === name).map((f) => f.value);
  }
  has(name: string): boolean {
    return this.fields.some((f) => f.name === name);
  }
  /** Replace the field's value, or append the field. */
  set(name: string, value: string): this {
    const bad = checkField(name, value);
    if (bad) throw new MessageError(bad);
    const i = this.fields.findIndex((f) => f.name === name);
    if (i === -1) this.fields.push({ name, value });
    else {
      this.fields[i] = { name, value };
      for (let j = this.fields.length - 1; j > i; j--) if (this.fields[j].name === name) this.fields.splice(j, 1);
    }
    return this;
  }
  /** Append a field without replacing (for repeatable unknown fields). */
  add(name: string, value: string): this {
    const bad = checkField(name, value);
    if (bad) throw new MessageError(bad);
    if (SINGLE.has(name) && this.has(name)) throw new MessageError(`header "${name}" given twice`);
    this.fields.push({ name, value });
    return this;
  }
  remove(name: string): this {
    for (let i = this.fields.length - 1; i >= 0; i--) if (this.fields[i].name === name) this.fields.splice(i, 1);
    return this;
  }
  /** Add a trace line; the newest `received` comes first, above the older ones. */
  addReceived(value: string): this {
    const bad = checkField('received', value);
    if (bad) throw new MessageError(bad);
    const i = this.fields.findIndex((f) => f.name === 'received');
    this.fields.splice(i === -1 ? this.fields.length : i, 0, { name: 'received', value });
    return this;
  }
  clone(): Headers {
    return new Headers(this.fields);
  }
  /** The canonical bytes of the headers entry. */
  serialize(): Buffer {
    return Buffer.from(this.fields.map((f) => `${f.name}: ${f.value}\n`).join(''), 'utf8');
  }
}

/** Legacy header names that list hidden recipients (Bcc, Resent-Bcc). */
export const BLIND_COPY = /^(resent-)?bcc$/i;

/**
 * Whether a field repeats a hidden-recipient list in another form: the
 * legacy original of bcc (mime-bcc), resent-bcc and its original, or a Bcc
 * or Resent-Bcc kept as a raw mime-header line (a second Bcc header). Such
 * fields follow bcc's rule: no recipient sees them.
 */
export function isBlindCopyField(f: Field): boolean {
  if (f.name === 'mime-bcc' || f.name === 'resent-bcc' || f.name === 'mime-resent-bcc') return true;
  return f.name === 'mime-header' && BLIND_COPY.test(f.value.slice(0, Math.max(0, f.value.indexOf(':'))).trim());
}

/** The headers without any other form of a hidden-recipient list (bcc itself is the caller's to handle). */
export function withoutBlindCopies(h: Headers): Headers {
  return h.fields.some(isBlindCopyField) ? new Headers(h.fields.filter((f) => !isBlindCopyField(f))) : h;
}

// ignoreBOM: by default a TextDecoder drops a leading U+FEFF without a word,
// so a message would be stored without bytes it came with, and a message with
// and without one would share a digest. Kept, it fails the name check.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Parse and check the bytes of a headers entry. */
export function parseHeaders(raw: Uint8Array): Headers {
  let text: string;
  try {
    text = utf8.decode(raw);
  } catch {
    throw new MessageError('headers: not valid UTF-8');
  }
  if (text.length === 0) throw new MessageError('headers: empty');
  if (!text.endsWith('\n')) throw new MessageError('headers: last line has no LF line end');
  const h = new Headers();
  const lines = text.slice(0, -1).split('\n');
  lines.forEach((line, i) => {
    const where = `headers line ${i + 1}`;
    if (line.includes('\r')) throw new MessageError(`${where}: CR in line (line ends must be LF only)`);
    if (line === '') throw new MessageError(`${where}: empty line`);
    if (line[0] === ' ' || line[0] === '\t') throw new MessageError(`${where}: folded header line (folding is not allowed)`);
    const colon = line.indexOf(': ');
    if (colon === -1) {
      if (line.endsWith(':') && NAME.test(line.slice(0, -1))) throw new MessageError(`${where}: header "${line.slice(0, -1)}" has no value`);
      throw new MessageError(`${where}: not "name: value"`);
    }
    const name = line.slice(0, colon);
    const value = line.slice(colon + 2);
    if (SINGLE.has(name) && h.has(name)) throw new MessageError(`${where}: header "${name}" given twice`);
    const bad = checkField(name, value);
    if (bad) throw new MessageError(`${where}: ${bad}`);
    h.fields.push({ name, value });
  });
  return h;
}

/** Fail unless every named field is present. */
export function requireFields(h: Headers, ...names: string[]): void {
  const missing = names.filter((n) => !h.has(n));
  if (missing.length) throw new MessageError(`headers: missing ${missing.join(', ')}`);
}
