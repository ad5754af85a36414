// The header mapping of ima-mime(7), both ways. Legacy header lines are
// unfolded, decoded (encoded-words, 8-bit bytes) and sorted into IMA fields;
// what IMA has no place for is kept in mime-* fields so that the way back
// restores it. The IMA order is fixed (known fields, then the rest in their
// legacy order, then the kept originals), so MIME -> IMA -> MIME -> IMA is
// the identity on the IMA side whatever order a composer writes.
import { randomUUID } from 'node:crypto';
import { domainToUnicode } from 'node:url';
import libmime from 'libmime';
import { decode as decodeCharset } from 'libmime/lib/charset';
import addressparser from 'nodemailer/lib/addressparser';
import MimeNode from 'nodemailer/lib/mime-node';
import { type Address, AddressError, formatAddressList, parseAddressList, parseMailbox } from '../address.js';
import { BLIND_COPY, Headers, checkField } from '../message/index.js';
import { formatMimeDate, parseMimeDate } from './date.js';
import { foldHeader } from './fold.js';
import { idDomain, imaIdOf, legacyIdOf, messageIds } from './ids.js';

/** IMA fields that come first, in this order. */
const LEAD = ['from', 'to', 'cc', 'bcc', 'subject', 'date', 'message-id', 'in-reply-to', 'references'];
/** Fields whose legacy original is kept as mime-NAME when the IMA form cannot say it all. */
const KEPT = ['from', 'to', 'cc', 'bcc', 'reply-to', 'sender', 'date', 'message-id', 'in-reply-to', 'references'];
/** Legacy fields read once: a repeat is kept verbatim in mime-header. */
const ONCE = new Set([...LEAD, 'reply-to', 'sender']);
const ADDRESS_FIELDS = new Set(['from', 'to', 'cc', 'bcc', 'reply-to', 'sender']);
/**
 * Fields that describe the MIME structure (or its one part), not the message:
 * the composer writes its own, and only its own. From a message's headers
 * entry one would come before the composer's and decide how readers parse
 * the body (a Content-Type with a boundary the body text holds turns that
 * text into attachments).
 */
const STRUCTURE = /^(mime-version$|content-)/i;
const NAME = /^[a-z0-9][a-z0-9-]{0,63}$/;
export const CONTENT_IDS = 'mime-content-ids';
const RAW = 'mime-header';

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Raw header bytes as text: UTF-8 when they are, else windows-1252 (the usual
 * 8-bit legacy), decoded as the body's text is (iconv-lite, through libmime).
 * Not Node's TextDecoder: its windows-1252 is Latin-1, and made the
 * typographic quotes and the euro sign (0x80-0x9F) into C1 controls.
 */
function headerText(binary: string): string {
  const bytes = Buffer.from(binary, 'latin1');
  try {
    return utf8.decode(bytes);
  } catch {
    return decodeCharset(bytes, 'windows-1252');
  }
}

/** A value fit for an IMA header: controls become spaces, no space at either end. */
function tidy(value: string): string {
  return value.replace(/[\x00-\x1f\x7f]/g, ' ').trim();
}

// An encoded-word as libmime finds one, and the text a B word may carry.
const ANY_WORD = /=\?[\w_\-*]+\?([QqBb])\?([^?]*)\?=/g;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2,3})?$/;
const broken = (m: RegExpMatchArray) => /b/i.test(m[1]) && !BASE64.test(m[2]);

/**
 * Decode RFC 2047 encoded-words (any charset libmime knows; one it does not
 * is read as UTF-8). A B word whose text is not base64 stays as written:
 * libmime would make it nothing, and the subject would lose it silently.
 */
export function decodeText(value: string): string {
  const decode = (text: string) => {
    try {
      return libmime.decodeWords(text);
    } catch {
      return text;
    }
  };
  if (!value.includes('=?')) return tidy(value);
  let out = '';
  let from = 0;
  for (const m of value.matchAll(ANY_WORD)) {
    if (!broken(m)) continue;
    out += decode(value.slice(from, m.index)) + m[0];
    from = m.index! + m[0].length;
  }
  return tidy(out + decode(value.slice(from)));
}

export interface LegacyHeader {
  /** The name as written. */
  name: string;
  /** Lowercase name. */
  key: string;
  /** Unfolded value, not yet decoded. */
  value: string;
}

/** Split mailparser's raw header lines (binary strings, folding included) into names and unfolded values. */
export function legacyHeaders(lines: ReadonlyArray<{ key: string; line: string }>): LegacyHeader[] {
  const out: LegacyHeader[] = [];
  for (const { line } of lines) {
    const text = headerText(line).replace(/\r?\n(?=[ \t])/g, '');
    const colon = text.indexOf(':');
    if (colon <= 0) continue;
    const name = tidy(text.slice(0, colon));
    if (name === '') continue;
    out.push({
      name,
      key: name.toLowerCase(),
      value: text
        .slice(colon + 1)
        .replace(/[\r\n]+/g, ' ')
        .trim(),
    });
  }
  return out;
}

/** Addresses of a legacy header: the ones the strict parser takes, and whether that was all of it. */
export function mapAddresses(raw: string): { list: Address[]; whole: boolean } {
  const list: Address[] = [];
  let whole = true;
  for (const entry of addressparser(raw)) {
    if (entry.group || !entry.address) {
      whole = false;
      continue;
    }
    try {
      const box = parseMailbox(unicodeDomain(entry.address));
      const name = decodeText(entry.name ?? '');
      // formatAddressList and parseAddressList agree on the name's quoting: check it as the IMA reader will.
      list.push(parseAddressList(formatAddressList([name ? { ...box, name } : box]))[0]);
    } catch (e) {
      if (!(e instanceof AddressError)) throw e;
      whole = false;
    }
  }
  return { list, whole: whole && list.length > 0 };
}

/** An address with its A-label domain shown in Unicode, as the composer's punycode comes back. */
function unicodeDomain(address: string): string {
  const at = address.lastIndexOf('@');
  if (at < 0 || !/(^|\.)xn--/i.test(address.slice(at + 1))) return address;
  const u = domainToUnicode(address.slice(at + 1));
  return u ? `${address.slice(0, at)}@${u}` : address;
}

/**
 * The IMA headers of a legacy message. `digestId` gives the message-id of a
 * message without a usable Message-ID (it hashes the whole message, so it is
 * asked only then).
 */
export function toImaHeaders(legacy: LegacyHeader[], digestId: () => string): Headers {
  const lead = new Map<string, string>();
  const originals = new Map<string, string>();
  const rest: [string, string][] = [];
  const seen = new Set<string>();
  const raw = { messageId: undefined as string | undefined, inReplyTo: undefined as string | undefined, references: undefined as string | undefined };
  const keep = (key: string, original: string) => originals.set(key, decodeText(original));

  for (const h of legacy) {
    const { key, value } = h;
    if (STRUCTURE.test(key)) continue;
    if (ONCE.has(key) && seen.has(key)) {
      rest.push([RAW, rawField(h.name, value)]);
      continue;
    }
    seen.add(key);
    if (ADDRESS_FIELDS.has(key)) {
      const { list, whole } = mapAddresses(value);
      const usable = key === 'from' ? list.slice(0, 1) : list;
      if (usable.length && LEAD.includes(key)) lead.set(key, formatAddressList(usable));
      else if (usable.length) rest.push([key, formatAddressList(usable)]);
      if (!whole || usable.length !== list.length) keep(key, value);
    } else if (key === 'subject') lead.set(key, decodeText(value));
    else if (key === 'date') {
      const date = parseMimeDate(value);
      if (date) lead.set('date', date);
      if (!date || formatMimeDate(date) !== tidy(value)) keep('date', value);
    } else if (key === 'message-id') raw.messageId = value;
    else if (key === 'in-reply-to') raw.inReplyTo = value;
    else if (key === 'references') raw.references = value;
    else if (NAME.test(key) && !key.startsWith('mime-') && key !== 'mailer') rest.push([key, decodeText(value)]);
    else rest.push([RAW, rawField(h.name, value)]);
  }

  // Ids last: the domain of an id ima-to-mime would write depends on from.
  const draft = new Headers();
  if (lead.has('from')) draft.fields.push({ name: 'from', value: lead.get('from')! });
  const domain = idDomain(draft);
  const mapIds = (key: 'message-id' | 'in-reply-to' | 'references', value: string | undefined, many: boolean) => {
    if (value === undefined) return;
    const ids = messageIds(value);
    if (key === 'message-id' && !ids.length) {
      // No usable id: the message gets one from its digest, and the way back writes that one;
      // the unusable header is kept as a repeat would be, so the next conversion sees the same.
      rest.push([RAW, rawField('Message-ID', value)]);
      return;
    }
    const mapped = (many ? ids : ids.slice(0, 1)).map(imaIdOf);
    if (mapped.length) lead.set(key, mapped.join(' '));
    if (!mapped.length || mapped.map((id) => legacyIdOf(id, domain)).join(' ') !== tidy(value)) keep(key, value);
  };
  mapIds('message-id', raw.messageId, false);
  mapIds('in-reply-to', raw.inReplyTo, false);
  mapIds('references', raw.references, true);
  if (!lead.has('message-id')) lead.set('message-id', digestId());

  const out = new Headers();
  const add = (name: string, value: string) => {
    // Our mapping makes well-formed fields; should one not be, it is kept verbatim rather than dropped.
    if (!checkField(name, value)) out.fields.push({ name, value });
    else if (!checkField(RAW, rawField(name, value))) out.fields.push({ name: RAW, value: rawField(name, value) });
  };
  for (const k of LEAD) if (lead.has(k)) add(k, lead.get(k)!);
  for (const [k, v] of rest) add(k, v);
  for (const k of KEPT) if (originals.has(k)) add(`mime-${k}`, originals.get(k)!);
  return out;
}

/** A legacy field kept whole in mime-header: "Name: decoded value". */
function rawField(name: string, value: string): string {
  const v = decodeText(value);
  return v === '' ? `${tidy(name)}:` : `${tidy(name)}: ${v}`;
}

/** Title-Case a lowercase IMA name for legacy readers (names are case-insensitive). */
function legacyName(name: string): string {
  if (name === 'message-id') return 'Message-ID';
  return name.replace(/(^|-)([a-z])/g, (_, d: string, c: string) => d + c.toUpperCase());
}

const line = (name: string, value: string) => foldHeader(`${name}: ${value}`);

// What a decoder takes for encoded-words: a run of them, with the white space between them that decoding drops.
const WORD = String.raw`=\?[^?]+\?[QqBb]\?[^?]*\?=`;
const WORD_RUN = new RegExp(`${WORD}(?:\\s*${WORD})*`, 'g');
const looksEncoded = (value: string) => value.includes('=?') && decodeText(value) !== value;

/**
 * Decoded text written as is, except that text which itself looks like
 * encoded-words (an encoded-word can carry "=?utf-8?q?hi?=") is encoded,
 * or the next conversion would decode it a second time.
 */
function verbatim(value: string): string {
  return looksEncoded(value) ? value.replace(WORD_RUN, (run) => libmime.encodeWord(run, 'Q', 52)) : value;
}

const encodedName = (a: Address): Address => (a.name && looksEncoded(a.name) ? { ...a, name: libmime.encodeWord(a.name, 'Q', 52) } : a);
const unstructured = (value: string) => (looksEncoded(value) ? libmime.encodeWord(value, 'Q', 52) : MimeNode.encodeHeaderValue('X-Text', value));

/**
 * The legacy header section of an IMA message, CRLF line ends, no final
 * empty line. Kept originals are written in place of the field they stand
 * for; bcc only when asked (a message going out over SMTP must not show it).
 */
export function toMimeHeaderLines(headers: Headers, opts: { keepBcc: boolean }): string[] {
  const originals = new Map<string, string>();
  for (const f of headers.fields) {
    const key = f.name.slice('mime-'.length);
    if (f.name.startsWith('mime-') && KEPT.includes(key) && !originals.has(key)) originals.set(key, f.value);
  }
  const domain = idDomain(headers);
  const out: string[] = [];
  const written = new Set<string>();
  const emitOriginal = (key: string) => {
    if (written.has(key)) return;
    written.add(key);
    if ((key === 'bcc' && !opts.keepBcc) || !originals.has(key)) return;
    // Verbatim: ASCII as is, anything else as UTF-8 (RFC 6532). Encoded-words would change how an
    // address list parses (a quoted name inside one is text, not a quoted name).
    out.push(line(legacyName(key), verbatim(originals.get(key)!)));
  };
  for (const { name, value } of headers.fields) {
    if (name === CONTENT_IDS) continue;
    if (name === RAW) {
      const colon = value.indexOf(':');
      const field = value.slice(0, colon).trim();
      // A second Bcc (or a Resent-Bcc) is kept as a raw line: it hides recipients as bcc does.
      if (colon > 0 && !STRUCTURE.test(field) && !(BLIND_COPY.test(field) && !opts.keepBcc)) out.push(line(field, verbatim(value.slice(colon + 1).trim())));
      continue;
    }
    if (STRUCTURE.test(name)) continue;
    const kept = name.startsWith('mime-') ? name.slice('mime-'.length) : '';
    if (KEPT.includes(kept)) {
      emitOriginal(kept);
      continue;
    }
    if (originals.has(name)) {
      emitOriginal(name);
      continue;
    }
    if (BLIND_COPY.test(name) && !opts.keepBcc) continue;
    out.push(line(legacyName(name), legacyValue(name, value, domain)));
  }
  if (!headers.has('message-id') && !originals.has('message-id')) out.push(line('Message-ID', `<${randomUUID()}@${domain}>`));
  return out;
}

function legacyValue(name: string, value: string, domain: string): string {
  // A display name that looks like encoded-words goes encoded (readers decode one even inside quotes).
  if (ADDRESS_FIELDS.has(name))
    return MimeNode.encodeHeaderValue(legacyName(name), looksEncoded(value) ? formatAddressList(parseAddressList(value).map(encodedName)) : value);
  switch (name) {
    case 'date':
      return formatMimeDate(value) ?? unstructured(value);
    case 'message-id':
    case 'in-reply-to':
    case 'references':
      return value
        .split(' ')
        .map((id) => legacyIdOf(id, domain))
        .join(' ');
    default:
      return unstructured(value);
  }
}
