// The content digest of a stored message (ima-message(5), THE MAILBOX): what
// tells a sender's retry of a stored message from a different message that
// reuses its id. A retry may differ only in what each hop or recipient
// changes: `received` lines (one per hop) and `bcc` (each recipient sees at
// most their own address); everything else must be the same bytes.
import type { Readable } from 'node:stream';
import type { Headers } from '../message/index.js';
import { chunksOf } from '../streams.js';

/**
 * A stored message keeps its digest in a name beside its entries,
 * ".digest-sha256-HEX" (a second link to its headers file; earlier, an empty
 * file): a name is made durable by the fsync of the directory that delivery
 * does anyway, where the contents of a file would cost an fsync of their
 * own. Messages stored before that kept it as the contents of the file
 * ".digest" (LEGACY_DIGEST_FILE), still read.
 */
const DIGEST_PREFIX = '.digest-';
export const LEGACY_DIGEST_FILE = '.digest';

/** The name that records digest ("sha256:HEX") beside a message's entries. */
export function digestFileName(digest: string): string {
  return DIGEST_PREFIX + digest.replace(':', '-');
}

/** The digest a directory listing records, or undefined when none of the names is a digest. */
export function digestInNames(names: readonly string[]): string | undefined {
  const name = names.find((n) => n.startsWith(DIGEST_PREFIX));
  return name && name.slice(DIGEST_PREFIX.length).replace('-', ':');
}

/** Fields left out of the digest: they change from hop to hop and recipient to recipient. */
const VARYING = ['received', 'bcc'];

// node:crypto at first use, not at load: it takes over a millisecond to load,
// and a run that stores nothing (a --check, a --clean) need not pay for it.
const crypto = () => process.getBuiltinModule('node:crypto');

// The one-shot form: no Hash object per entry.
const sha256 = (data: Buffer | string) => crypto().hash('sha256', data, 'hex');

/** Canonical order (ima-message(5) Writing): headers, body, body.html, then attachments by the bytes of their names. */
const rank = (path: string) => ['headers', 'body', 'body.html'].indexOf(path) + 1 || 4;
const canonical = (a: string, b: string) => rank(a) - rank(b) || Buffer.compare(Buffer.from(a), Buffer.from(b));

/**
 * The digest is the SHA-256 of a manifest: one line "PATH SIZE SHA256\n" per
 * entry, in canonical order, where the headers entry is hashed without its
 * `received` and `bcc` fields. Entries are hashed as they stream past.
 */
export class ContentDigest {
  private readonly lines = new Map<string, string>();

  headers(h: Headers): void {
    // A copy to take fields out of only when there are some (a message that has not travelled yet has none).
    const raw = h.fields.some((f) => VARYING.includes(f.name)) ? VARYING.reduce((c, f) => c.remove(f), h.clone()).serialize() : h.serialize();
    this.lines.set('headers', `headers ${raw.length} ${sha256(raw)}\n`);
  }

  /** Pass an entry's data through, hashing it; the entry counts once its data has all gone by. */
  async *entry(path: string, data: Readable): AsyncGenerator<Buffer> {
    const hash = crypto().createHash('sha256');
    let size = 0;
    for await (const chunk of chunksOf(data)) {
      hash.update(chunk);
      size += chunk.length;
      yield chunk;
    }
    this.lines.set(path, `${path} ${size} ${hash.digest('hex')}\n`);
  }

  /** An entry whose data is all in hand. */
  bytes(path: string, data: Buffer): Buffer {
    this.lines.set(path, `${path} ${data.length} ${sha256(data)}\n`);
    return data;
  }

  /** "sha256:HEX" of the manifest. */
  finish(): string {
    const paths = [...this.lines.keys()].sort(canonical);
    return `sha256:${sha256(paths.map((p) => this.lines.get(p)!).join(''))}`;
  }
}

/**
 * The directory name of a message whose id is already taken by other
 * content: a UUID (version 8) from the id and the digest, so that a retry of
 * this message finds it again and a third message gets a name of its own.
 */
export function conflictName(id: string, digest: string): string {
  const b = crypto().createHash('sha256').update(`${id} ${digest}`).digest().subarray(0, 16);
  b[6] = (b[6] & 0x0f) | 0x80;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
