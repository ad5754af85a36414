// server-receive against peers that drip bytes or idle without sending
// mail: each is cut at its deadline, however the bytes trickle in.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { ImdpClient } from '../../src/imdp/client.js';
import { basicFields, connect, headersOf, message, serverPool } from '../imdp-fixture.js';

const pool = serverPool();
const server = (extra: string) => pool({ extra });

/** Write `bytes` one at a time every `every` ms until the server closes; stops then. */
function drip(c: ImdpClient, bytes: Buffer, every: number): () => void {
  let i = 0;
  const t = setInterval(() => {
    if (c.socket.destroyed || i >= bytes.length) clearInterval(t);
    else c.socket.write(bytes.subarray(i, ++i));
  }, every);
  c.socket.once('close', () => clearInterval(t));
  return () => clearInterval(t);
}

test('server-receive: a command dripped a byte at a time is cut at timeouts.command, though no read waits the idle time', async () => {
  const s = await server('[timeouts]\nidle = "2s"\ncommand = "1s"\n');
  const c = await connect(s.port);
  const stop = drip(c, Buffer.from(`MAIL 1000\n${'x'.repeat(500)}`), 200);
  const bye = await c.readAnswer();
  stop();
  assert.equal(bye.word, 'BYE');
  assert.match(bye.text, /no line end within 1 s/);
  c.close();
});

test('server-receive: MAIL headers sent a line at a time must all come within timeouts.command', async () => {
  const s = await server('[timeouts]\nidle = "2s"\ncommand = "1s"\n');
  const c = await connect(s.port);
  const stop = drip(c, Buffer.from(`MAIL 1000\n${'from: a@a.test\n'.repeat(100)}`), 5);
  const bye = await c.readAnswer(30_000);
  stop();
  assert.equal(bye.word, 'BYE');
  assert.match(bye.text, /MAIL and its headers not complete within 1 s: closing/);
  await s.waitLog(/connection closed: MAIL and its headers not complete within 1 s/);
});

test('server-receive: DATA slower than limits.min_data_rate is cut, though bytes keep coming within timeouts.data', async () => {
  const s = await server('[limits]\nmin_data_rate = 1024\n[timeouts]\ndata = "2s"\ncommand = "1s"\n');
  const c = await connect(s.port);
  const tar = await message(basicFields());
  c.sendMail(headersOf(tar), tar.length);
  assert.equal((await c.readAnswer()).word, 'ACCEPT');
  c.socket.write('DATA\n');
  const stop = drip(c, tar, 100);
  const bye = await c.readAnswer(30_000);
  stop();
  assert.equal(bye.word, 'BYE');
  assert.match(bye.text, /data slower than 1024 bytes\/s/);
  await s.waitLog(/connection closed: data slower than 1024 bytes\/s/);
});

test('server-receive: a peer that sends no MAIL is cut at timeouts.first_message, however busy it keeps the line', async () => {
  const s = await server('[timeouts]\nidle = "5s"\nfirst_message = "1s"\n[limits]\nmax_errors = 1000\n');
  const c = await connect(s.port);
  const stop = setInterval(() => c.socket.write('NOOP\n'), 50);
  let a = await c.readAnswer();
  while (a.word === 'ERROR') a = await c.readAnswer();
  clearInterval(stop);
  assert.equal(a.word, 'BYE');
  assert.match(a.text, /no message within 1 s/);
  c.close();
});
