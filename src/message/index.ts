// The IMA message (ima-message(5)): a tar of headers, body, body.html and
// attachments/NAME, read and written as streams.
export { BLIND_COPY, Headers, parseHeaders, requireFields, checkField, type Field, withoutBlindCopies } from './headers.js';
export { DEFAULT_LIMITS, MAX_NAME_BYTES, MessageError, type MessageLimits } from './limits.js';
export { ATTACHMENTS, checkAttachmentName, classifyPath } from './names.js';
export { plainHeaders, readMessage, type Entry } from './read.js';
export {
  bufferPart,
  canonicalEntries,
  entryBytes,
  mtimeOf,
  tarLength,
  writeEntries,
  writeMessage,
  type MessageParts,
  type OutEntry,
  type Part,
} from './write.js';
export { TarGuard, TarWalker } from './tar-guard.js';
