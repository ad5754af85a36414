// Message ids between the two worlds (ima-mime(7)). A legacy id maps to
// urn:uuid:UUIDv5(its text); an id of the form <UUID@domain> in lowercase
// (what ima-to-mime writes for a native IMA message) maps back to
// urn:uuid:UUID, so a legacy reply to an IMA message threads in IMA readers.
import { asciiDomain, parseAddress } from '../address.js';
import type { Headers } from '../message/index.js';
import { LEGACY_NAMESPACE, uuidV5 } from './uuid.js';

const URN = 'urn:uuid:';
const NATIVE = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})@[^@\s]+$/;

/** The ids in a Message-ID, In-Reply-To or References value: the text inside each <...>, or a bare id when there are no brackets. */
export function messageIds(value: string): string[] {
  const bracketed = [...value.matchAll(/<([^<>]*)>/g)].map((m) => m[1].replace(/\s+/g, '')).filter((id) => id !== '');
  if (bracketed.length || value.includes('<')) return bracketed;
  const bare = value.trim();
  return bare !== '' && !/\s/.test(bare) ? [bare] : [];
}

/** The IMA id of a legacy id (without its angle brackets). */
export function imaIdOf(legacy: string): string {
  const native = NATIVE.exec(legacy);
  return URN + (native ? native[1] : uuidV5(LEGACY_NAMESPACE, legacy));
}

/** The IMA id of a message without a Message-ID: from the SHA-256 of its bytes. */
export function imaIdOfDigest(sha256hex: string): string {
  return URN + uuidV5(LEGACY_NAMESPACE, `sha256:${sha256hex}`);
}

/** The domain ima-to-mime puts after the UUID of an id it has no legacy original for: the sender's, else the mailer's. */
export function idDomain(headers: Headers): string {
  try {
    const from = headers.get('from');
    if (from) return parseAddress(from).asciiDomain;
  } catch {
    // an unparseable from falls through
  }
  const mailer = headers.get('mailer');
  if (mailer) return asciiDomain(mailer);
  return 'localhost';
}

/** The legacy form of an IMA id: <UUID@domain>, or the id itself in brackets when it is not a urn:uuid:. */
export function legacyIdOf(imaId: string, domain: string): string {
  return imaId.startsWith(URN) ? `<${imaId.slice(URN.length)}@${domain}>` : `<${imaId}>`;
}
