// The legacy bridge's conversions: a 1 GiB base64 attachment each way (MB/s
// of payload and peak RSS of a fresh process; 256 MiB with --quick), then
// 10,000 small messages each way in-process (messages/s).
import { once } from 'node:events';
import { closeSync, createReadStream, createWriteStream, openSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough, Readable, Writable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { finished } from 'node:stream/promises';
import { readMime } from '../src/mime/to-ima.js';
import { imaToMime } from '../src/mime/to-mime.js';
import { writeMessage } from '../src/message/index.js';
import { BIN, type Bench } from './_bench.js';
import { mb, measure, patternFile } from './_measure.js';

/** A MIME message carrying `file` as a base64 attachment in 76-character lines, as mailers write it. */
async function base64Message(file: string, out: string): Promise<void> {
  const w = createWriteStream(out);
  const put = async (text: string) => {
    if (!w.write(text)) await once(w, 'drain');
  };
  await put('From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: big\r\nDate: Mon, 23 Nov 2026 10:00:00 +0100\r\nMessage-ID: <big@a.test>\r\n');
  await put('MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="BB"\r\n\r\n--BB\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n');
  await put('--BB\r\nContent-Type: application/octet-stream; name="big.bin"\r\nContent-Transfer-Encoding: base64\r\n\r\n');
  let carry = Buffer.alloc(0);
  for await (const chunk of createReadStream(file, { highWaterMark: 4 * 1024 * 1024 })) {
    const data = Buffer.concat([carry, chunk as Buffer]);
    const whole = data.length - (data.length % 57);
    carry = data.subarray(whole);
    await put(data.subarray(0, whole).toString('base64').replace(/.{76}/g, '$&\r\n'));
  }
  await put(`${carry.length ? `${carry.toString('base64')}\r\n` : ''}--BB--\r\n`);
  w.end();
  await finished(w);
}

const sink = () =>
  new Writable({
    write(_c, _e, cb) {
      cb();
    },
  });

async function smallMime(i: number): Promise<Buffer> {
  return Buffer.from(
    [
      'From: "Alice Example" <alice@a.test>',
      'To: bob@b.test, =?utf-8?q?Carol_M=C3=BCller?= <carol@c.test>',
      `Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= number ${i}`,
      'Date: Mon, 23 Nov 2026 10:00:00 +0100',
      `Message-ID: <small-${i}@a.test>`,
      'MIME-Version: 1.0',
      'Content-Type: multipart/alternative; boundary="AA"',
      '',
      '--AA',
      'Content-Type: text/plain; charset=utf-8',
      'Content-Transfer-Encoding: quoted-printable',
      '',
      'Hello Bob,=0A'.repeat(1) + 'x'.repeat(60) + '\r\n'.repeat(1) + 'the report is attached. R=C3=A9gards\r\n'.repeat(40),
      '--AA',
      'Content-Type: text/html; charset=utf-8',
      '',
      '<p>Hello Bob, the report is attached.</p>\r\n'.repeat(20),
      '--AA--',
      '',
    ].join('\r\n'),
  );
}

async function rate(n: number, one: (i: number) => Promise<void>): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await one(i);
  return n / (Number(process.hrtime.bigint() - t0) / 1e9);
}

export async function run(b: Bench): Promise<void> {
  const SIZE = (b.quick ? 256 : 1024) * 1024 * 1024;
  const SMALL = b.n(10_000, 2000);
  const env = b.env;
  const dir = b.fresh('mime');
  {
    const payload = join(dir, 'big.bin');
    patternFile(payload, SIZE);
    const eml = join(dir, 'big.eml');
    await base64Message(payload, eml);
    const ima = join(dir, 'big.ima');
    const cfg = ['--config', join(dir, 'mime.toml')];
    writeFileSync(join(dir, 'mime.toml'), 'max_message_bytes = "4G"\n');

    const fd = openSync(ima, 'w');
    const m2i = await measure([join(BIN, 'mime-to-ima'), ...cfg, eml], { stdout: fd, env });
    closeSync(fd);
    if (m2i.code !== 0) throw new Error(`mime-to-ima failed: ${m2i.stderr}`);
    b.row(`mime-to-ima, ${mb(SIZE).toFixed(0)} MiB base64 attachment -> file (MB/s of payload)`, SIZE / 1e6 / m2i.seconds, 'MB/s', undefined, '>= 100 MB/s');
    b.row(`mime-to-ima ${mb(SIZE).toFixed(0)} MiB: peak RSS`, m2i.peakRssMb, 'MB', undefined, '< 100 MB');

    const devnull = openSync('/dev/null', 'w');
    const i2m = await measure([join(BIN, 'ima-to-mime'), ...cfg, ima], { stdout: devnull, env });
    closeSync(devnull);
    if (i2m.code !== 0) throw new Error(`ima-to-mime failed: ${i2m.stderr}`);
    b.row(
      `ima-to-mime, ${mb(SIZE).toFixed(0)} MiB attachment (.ima file) -> /dev/null (MB/s of payload)`,
      SIZE / 1e6 / i2m.seconds,
      'MB/s',
      undefined,
      '>= 100 MB/s',
    );
    b.row(`ima-to-mime ${mb(SIZE).toFixed(0)} MiB: peak RSS`, i2m.peakRssMb, 'MB', undefined, '< 100 MB');

    const mimes = await Promise.all(Array.from({ length: SMALL }, (_, i) => smallMime(i)));
    const imas: Buffer[] = [];
    const toImaRate = await rate(SMALL, async (i) => {
      const m = await readMime(Readable.from([mimes[i]]));
      const out = new PassThrough();
      const bytes = buffer(out);
      await writeMessage(out, m);
      imas.push(await bytes);
      await m.dispose();
    });
    const toMimeRate = await rate(SMALL, (i) => imaToMime(Readable.from([imas[i]]), sink(), {}).then(() => undefined));
    const kb = (mimes[0].length / 1024).toFixed(1);
    b.row(`mime-to-ima in-process, ${SMALL} small messages (${kb} KB)`, toImaRate, 'msg/s', undefined, '>= 1000 msg/s');
    b.row(`ima-to-mime in-process, ${SMALL} small messages`, toMimeRate, 'msg/s', undefined, '>= 1000 msg/s');
  }
}
