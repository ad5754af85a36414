// readMime joins input, meter and parser itself (not with stream.pipeline):
// an input that fails or closes before its end must fail the conversion,
// never leave it waiting.
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import { readMime } from '../../src/mime/to-ima.js';

const HEAD =
  'From: a@a.test\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n';

describe('readMime and its input', () => {
  it('an input closed in the middle of an attachment fails the conversion', async () => {
    const input = new PassThrough();
    const converting = readMime(input);
    input.write(HEAD + 'QUJD'.repeat(50_000) + '\r\n');
    setImmediate(() => input.destroy());
    await assert.rejects(converting, /Premature close/);
  });

  it('an input that fails passes its error on', async () => {
    const input = new PassThrough();
    const converting = readMime(input);
    input.write(HEAD + 'QUJD\r\n');
    setImmediate(() => input.destroy(Object.assign(new Error('connection reset'), { code: 'ECONNRESET' })));
    await assert.rejects(converting, /connection reset|ECONNRESET/);
  });
});
