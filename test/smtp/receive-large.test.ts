// A 100 MB attachment through smtp-receive -> handle-incoming-mail ->
// give-recipient (in-process): it arrives byte for byte, and the server's
// peak resident memory (VmHWM) stays under 100 MB.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createReadStream, readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Listening } from '../helpers.js';
import { MX_EXTRA, boxes, config, startReceive } from './receive-fixture.js';

const MB = 1024 * 1024;
const SIZE = 100 * MB;
const block = randomBytes(MB); // the attachment: this block 100 times, its first byte varied
const piece = (i: number) => {
  const b = Buffer.from(block);
  b[0] = i;
  return b;
};

/** Peak resident set of a process, in bytes (Linux). */
const peakRss = (pid: number) => Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * 1024;

/** Send one message whose attachment is streamed as base64 lines; resolve with the reply to DATA. */
async function sendLarge(port: number): Promise<string> {
  const s = net.connect(port, '127.0.0.1');
  s.on('error', () => {});
  let got = '';
  const next = (re: RegExp) =>
    new Promise<void>((res, rej) => {
      const t = setTimeout(() => rej(new Error(`no ${re} in ${JSON.stringify(got)}`)), 60_000);
      const check = () => {
        if (re.test(got)) {
          clearTimeout(t);
          s.off('data', check);
          res();
        }
      };
      s.on('data', (d: Buffer) => (got += d));
      s.on('data', check);
      check();
    });
  const write = async (data: string | Buffer) => {
    if (!s.write(data)) await once(s, 'drain');
  };
  await next(/^220 /m);
  await write('EHLO client.a.test\r\nMAIL FROM:<alice@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n');
  await next(/^354 /m);
  await write(
    'From: alice@a.test\r\nTo: bob@b.test\r\nSubject: big\r\nMessage-ID: <big-1@a.test>\r\nMIME-Version: 1.0\r\n' +
      'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nThe data.\r\n' +
      '--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="data.bin"\r\nContent-Transfer-Encoding: base64\r\n\r\n',
  );
  let carry = Buffer.alloc(0);
  for (let i = 0; i < SIZE / MB; i++) {
    const all = Buffer.concat([carry, piece(i)]);
    const whole = all.length - (all.length % 57);
    carry = all.subarray(whole);
    const b64 = all.subarray(0, whole).toString('base64');
    await write(b64.replace(/(.{76})/g, '$1\r\n'));
  }
  await write(`${carry.toString('base64')}\r\n--b1--\r\n.\r\n`);
  await next(/^(250|[45]\d\d) [^\r\n]*\r\n(?![\s\S]*^354)/m);
  s.end('QUIT\r\n');
  return got
    .split('\r\n')
    .filter((l) => l)
    .at(-1)!;
}

describe('smtp-receive with a 100 MB attachment', () => {
  let mx: Listening;
  before(async () => {
    mx = await startReceive(
      config('mx-large', `[limits]\nmax_message_bytes = "200M"\n${MX_EXTRA}verdicts = false # covered elsewhere; keeps this test short\n`),
    );
  });
  after(() => mx.stop());

  it('stores it byte for byte; the message costs the server less than 100 MB of resident memory', async () => {
    const baseline = peakRss(mx.proc.pid!);
    const last = await sendLarge(mx.port);
    const m = /^250 2\.0\.0 accepted as urn:uuid:(\S+)$/.exec(last);
    assert.ok(m, last);
    const want = createHash('sha256');
    for (let i = 0; i < SIZE / MB; i++) want.update(piece(i));
    const got = createHash('sha256');
    let n = 0;
    for await (const c of createReadStream(join(boxes, 'bob', 'new', m[1], 'attachments', 'data.bin'))) {
      got.update(c as Buffer);
      n += (c as Buffer).length;
    }
    assert.equal(n, SIZE);
    assert.equal(got.digest('hex'), want.digest('hex'));
    // Held whole, the 137 MB of DATA (and the 100 MB decoded) would show; streamed, what grows is the
    // garbage V8 lets pile up between collections. The idle server's own peak is the baseline.
    const peak = peakRss(mx.proc.pid!);
    const note = `smtp-receive peak RSS ${(peak / MB).toFixed(1)} MB (idle ${(baseline / MB).toFixed(1)} MB) for a 100 MB attachment`;
    process.stderr.write(`# ${note}\n`);
    assert.ok(peak - baseline < 100 * MB, note);
  });
});
