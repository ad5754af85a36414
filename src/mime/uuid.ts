// UUIDv5 (RFC 9562 5.5): SHA-1 of a namespace and a name, with the version
// and variant bits set. Deterministic, so the same legacy Message-ID always
// gives the same IMA message-id and mailbox dedupe works for legacy retries.
import { createHash } from 'node:crypto';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * The namespace of every id the bridge derives (ima-mime(7)): a legacy
 * Message-ID's text, or "sha256:" and the digest of a message without one.
 */
export const LEGACY_NAMESPACE = '3f1c6c5e-8a0b-4d8e-9b57-5d0c2a7e4b19';

export function uuidV5(namespace: string, name: string): string {
  if (!UUID.test(namespace)) throw new Error(`namespace ${namespace} is not a UUID`);
  const hash = createHash('sha1')
    .update(Buffer.from(namespace.replace(/-/g, ''), 'hex'))
    .update(name, 'utf8')
    .digest();
  hash[6] = (hash[6] & 0x0f) | 0x50;
  hash[8] = (hash[8] & 0x3f) | 0x80;
  const hex = hash.subarray(0, 16).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
