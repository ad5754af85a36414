// Limits and the error a reader raises for a bad message. Every bound a
// hostile message could push against is here, with its default.
import { Failure } from '../failure.js';

/** A message that breaks a rule of ima-message(5): permanent, never retried as is. */
export class MessageError extends Failure {
  constructor(reason: string) {
    super('permanent', reason, '5.6.0');
  }
}

export interface MessageLimits {
  /** Size of the headers entry. */
  maxHeaderBytes: number;
  /** Number of entries (headers, body, body.html, attachments). */
  maxEntries: number;
  /** Sum of the entry sizes. */
  maxTotalBytes: number;
  /** Size of a pax extended header or GNU long-name entry. */
  maxMetaBytes: number;
}

export const DEFAULT_LIMITS: Readonly<MessageLimits> = Object.freeze({
  maxHeaderBytes: 64 * 1024,
  maxEntries: 1000,
  maxTotalBytes: 1024 * 1024 * 1024 * 4,
  maxMetaBytes: 64 * 1024,
});

/** Longest attachment name in bytes: what a file system takes as one name. */
export const MAX_NAME_BYTES = 255;

/**
 * Zero padding allowed after the two end-of-archive blocks: tar writes whole
 * records (10240 bytes by default, larger with a big blocking factor).
 */
export const MAX_PADDING_BYTES = 1024 * 1024;
