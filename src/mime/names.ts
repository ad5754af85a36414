// Attachment names from legacy mail are hostile input: decoded by the parser,
// then made into one safe, unique file name each (ima-mime(7)). And the
// mime-content-ids header that keeps the content-ids of inline parts.
import { detectExtension } from 'nodemailer/lib/mime-funcs';
import { MAX_NAME_BYTES, checkAttachmentName } from '../message/index.js';

// Path separators, C0 and C1 controls, DEL, U+FFFD (undecodable bytes) and the
// bidirectional overrides that make "gpj.exe" look like "exe.jpg".
const STRIP = /[/\\\x00-\x1f\x7f-\x9f\uFFFD\u202A-\u202E\u2066-\u2069]/gu;

/** The safe form of a name a message gave, or undefined when nothing usable is left. */
export function cleanName(name: string | undefined): string | undefined {
  if (name === undefined) return undefined;
  const n = capBytes(name.normalize('NFC').replace(STRIP, '').trim());
  return n === '' || n === '.' || n === '..' ? undefined : n;
}

/** A name's stem and extension; only a short tail after the last dot counts as an extension. */
function splitExtension(name: string): [string, string] {
  const dot = name.lastIndexOf('.');
  return dot > 0 && name.length - dot <= 16 ? [name.slice(0, dot), name.slice(dot)] : [name, ''];
}

/** The longest start of text, in whole characters, that fits in budget bytes. */
function cutToBytes(text: string, budget: number): string {
  let kept = '';
  let used = 0;
  for (const ch of text) {
    used += Buffer.byteLength(ch);
    if (used > budget) break;
    kept += ch;
  }
  return kept;
}

/**
 * stem + suffix + ext within MAX_NAME_BYTES: the stem gives way, so the
 * suffix (what makes a name unique) and the extension always survive.
 */
function fitted(stem: string, suffix: string, ext: string): string {
  const budget = MAX_NAME_BYTES - Buffer.byteLength(suffix + ext);
  return (cutToBytes(stem, budget) + suffix + ext).normalize('NFC');
}

/** Cut a name to MAX_NAME_BYTES, keeping its extension and whole characters. */
function capBytes(name: string): string {
  if (Buffer.byteLength(name) <= MAX_NAME_BYTES) return name;
  const [stem, ext] = splitExtension(name);
  return fitted(stem, '', ext);
}

/** The extension of a content type; the type table's answer for application/octet-stream is "*", no file name's. */
function extensionOf(contentType: string): string {
  const ext = detectExtension(contentType);
  return /^[a-z0-9]+$/i.test(ext) ? ext : 'bin';
}

/** Gives every attachment of one message its name: cleaned, derived when missing, unique. */
export class AttachmentNames {
  private readonly taken = new Set<string>();
  private unnamed = 0;

  name(given: string | undefined, contentType: string): string {
    let name = cleanName(given);
    if (contentType === 'message/rfc822' && name && !/\.eml$/i.test(name)) name = capBytes(`${name}.eml`);
    name ??= `attachment-${++this.unnamed}.${contentType === 'message/rfc822' ? 'eml' : extensionOf(contentType)}`;
    return this.unique(checkAttachmentName(name));
  }

  /** report.pdf, then report-2.pdf, report-3.pdf... */
  private unique(name: string): string {
    // A name already at the byte limit is shortened before "-N" goes on: cut
    // after appending, the suffix itself was cut and the name never changed.
    let candidate = name;
    const [stem, ext] = splitExtension(name);
    for (let i = 2; this.taken.has(candidate); i++) candidate = fitted(stem, `-${i}`, ext);
    this.taken.add(candidate);
    return candidate;
  }
}

// The value of mime-content-ids: "NAME=CID" pairs separated by spaces, with
// "%", space and "=" in either written as %25, %20 and %3D.
const escape = (s: string) => s.replace(/[% =]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`);
const unescape = (s: string) => s.replace(/%(25|20|3D)/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));

export function formatContentIds(ids: ReadonlyMap<string, string>): string {
  return [...ids]
    .sort(([a], [b]) => Buffer.compare(Buffer.from(a), Buffer.from(b)))
    .map(([name, cid]) => `${escape(name)}=${escape(cid)}`)
    .join(' ');
}

export function parseContentIds(value: string | undefined): Map<string, string> {
  const ids = new Map<string, string>();
  for (const pair of (value ?? '').split(' ')) {
    const eq = pair.indexOf('=');
    if (eq > 0) ids.set(unescape(pair.slice(0, eq)), unescape(pair.slice(eq + 1)));
  }
  return ids;
}
