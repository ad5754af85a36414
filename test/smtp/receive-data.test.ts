// The DATA stream's reader (receive-data.ts): the bytes reach every
// consumer whole, the slowest one sets the pace, and a refusal stops the
// consumers and reads the rest of the data to its end even when a consumer
// has stopped reading (an SMTP server answers only after the end of DATA).
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { PassThrough, Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { type DataParser, DataTap, fastDataScan } from '../../src/smtp/receive-data.js';

const within = <T>(p: Promise<T>, ms = 10_000) =>
  Promise.race([p, new Promise<never>((_r, rej) => setTimeout(() => rej(new Error(`no answer within ${ms} ms`)), ms).unref())]);

const collect = async (s: Readable) => {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
};

/** A source of `n` chunks of `line` (CRLF lines), with 'end' observable. */
const lines = (line: string, n: number) => Readable.from(Array.from({ length: n }, () => Buffer.from(line)));

describe('DATA reader', () => {
  it('gives every consumer the whole message, paced by a slow one, and counts the bytes', async () => {
    const line = `${'x'.repeat(998)}\r\n`;
    const fast = new PassThrough();
    const slow = new PassThrough({ highWaterMark: 1024 });
    const tap = new DataTap(lines(line, 2000), 10 * 1024 * 1024);
    const fed = tap.into([fast, slow]);
    const slowly = (async () => {
      const parts: Buffer[] = [];
      for await (const c of slow) {
        parts.push(c as Buffer);
        await new Promise((r) => setImmediate(r));
      }
      return Buffer.concat(parts);
    })();
    const [, a, b] = await within(Promise.all([fed, collect(fast), slowly]));
    assert.equal(tap.bytes, 2000 * 1000);
    assert.equal(a.length, 2000 * 1000);
    assert.ok(a.equals(b));
  });

  it('refuses an oversized message with 552 5.3.4, reads the rest to its end, and a consumer that starts late sees the error', async () => {
    const source = lines(`${'x'.repeat(70)}\r\n`, 5000);
    const ended = once(source, 'end');
    const late = new PassThrough({ highWaterMark: 1024 }); // read only from 50 ms on (a check still loading, say)
    late.on('error', () => {});
    const tap = new DataTap(source, 64 * 1024);
    const fed = tap.into([new PassThrough().resume(), late]).then(
      () => undefined,
      (e: Error & { status?: string }) => e,
    );
    const lateRead = new Promise((r) => setTimeout(r, 50))
      .then(() => collect(late))
      .then(
        () => 'read to an end',
        (e: Error) => e.message,
      );
    const err = await within(fed);
    assert.equal(err?.status, '5.3.4');
    await within(ended); // read to its end, so the reply comes after the client's last byte
    assert.match(await within(lateRead), /larger than the limit/);
    assert.ok(tap.bytes > 64 * 1024);
  });

  it('refuses a bare LF split across chunks with 550 5.5.2 and passes a CRLF split across chunks', async () => {
    const ok = new DataTap(Readable.from([Buffer.from('a\r'), Buffer.from('\nb\r\n')]), 1024);
    await within(ok.into([new PassThrough().resume()]));
    const source = Readable.from([Buffer.from('a\r\n'), Buffer.from('\n.\n'), Buffer.from('more\r\n')]);
    const ended = once(source, 'end');
    const out = new PassThrough().resume();
    const err = await within(
      new DataTap(source, 1024).into([out]).then(
        () => undefined,
        (e: Error & { status?: string }) => e,
      ),
    );
    assert.equal(err?.status, '5.5.2');
    await within(ended);
  });
});

// smtp-server's own parser, as the reference the faster scan must match byte for byte.
interface Stream {
  startDataMode(max?: number): PassThrough;
  write(chunk: Buffer): boolean;
  continue(): void;
  oncommand(line: Buffer, cb?: () => void): void;
}
const { SMTPStream } = (await import('smtp-server/lib/smtp-stream.js' as string)) as { SMTPStream: new () => Stream };

/** Feed `chunks` after DATA; resolve with the data stream's bytes and the commands that follow the end of data. */
async function parse(chunks: Buffer[], fast: boolean): Promise<string> {
  const p = new SMTPStream();
  if (fast) fastDataScan(p as unknown as DataParser);
  const commands: string[] = [];
  p.oncommand = (line, cb) => {
    commands.push(line.toString('latin1'));
    cb?.();
  };
  const data = p.startDataMode();
  const body = collect(data);
  void body.then(() => p.continue());
  for (const c of chunks) if (!p.write(c)) await once(p as unknown as PassThrough, 'drain');
  const got = await body;
  await new Promise((r) => setImmediate(r));
  return JSON.stringify([got.toString('latin1'), commands]);
}

describe('DATA end and escape dots, faster scan', () => {
  it('matches smtp-server byte for byte at every split point of tricky input', async () => {
    const messages = [
      'Subject: x\r\n\r\n..one\r\n.\r\nQUIT\r\n',
      '..\r\n.\r\n',
      '.\r\nNOOP\r\n',
      'a\r\n..b\r\n...\r\n.\r\n..\r\nx\r\n.\r\n',
      'line\r\n.x\r\n\n.\r\n\r\n.\r\nRSET\r\n',
      `${'y'.repeat(70)}\r\n`.repeat(3) + '..\r\n.\r\n',
    ];
    for (const m of messages) {
      const whole = Buffer.from(m, 'latin1');
      for (let a = 0; a <= whole.length; a++) {
        for (const b of [a, Math.min(whole.length, a + 1), Math.min(whole.length, a + 3)]) {
          const chunks = [whole.subarray(0, a), whole.subarray(a, b), whole.subarray(b)].filter((c) => c.length);
          assert.equal(await within(parse(chunks, true)), await within(parse(chunks, false)), `${JSON.stringify(m)} split at ${a},${b}`);
        }
      }
    }
  });

  it('matches smtp-server byte for byte when a message of many dotted lines comes in many chunks of any size', async () => {
    // Escape dots, end-like lines and bare dots near every join of held bytes and the next chunk.
    const lines = ['..a', '.', '...', 'x.', '.\r', 'plain text', '..', '. .', ''];
    let seed = 7;
    const random = (n: number) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % n;
    for (let round = 0; round < 150; round++) {
      const body = Array.from({ length: 40 }, () => lines[random(lines.length)]).join('\r\n');
      const whole = Buffer.from(`${body}\r\n.\r\nQUIT\r\n`, 'latin1');
      const chunks: Buffer[] = [];
      for (let at = 0; at < whole.length;) {
        const n = 1 + random(12);
        chunks.push(whole.subarray(at, at + n));
        at += n;
      }
      assert.equal(await within(parse(chunks, true)), await within(parse(chunks, false)), `round ${round}`);
    }
  });
});
