// post-office as ima(7) and post-office(1) promise it: LIST's MSG lines and
// FETCH of one id, SIGHUP reload, --inetd and LISTEN_FDS under the real
// systemd-socket-activate.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Readable } from 'node:stream';
import { readMessage } from '../../src/message/index.js';
import { type Activated, type Listening, socketActivate, startListening } from '../helpers.js';
import { boxes, converse, deliver, poConfig } from '../imrp-fixture.js';

const children: ChildProcess[] = [];
const servers: Listening[] = [];
after(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
  await Promise.all(servers.map((s) => s.stop()));
});

async function postOffice(file: string): Promise<Listening> {
  const s = await startListening('post-office', ['--config', file, '--listen', '127.0.0.1:0']);
  servers.push(s);
  return s;
}

test('post-office: LIST gives one MSG line per message in the format of ima(7); FETCH of one id sends exactly that message', async () => {
  const [id] = await deliver('bob', 1);
  const s = await postOffice(await poConfig());
  const listed = await converse(s.port, ['LOGIN bob sesame', 'LIST new', 'QUIT'], /^BYE/m);
  const msg = new RegExp(`^MSG ${id} new (\\d+) \\d{4}-\\d\\d-\\d\\dT[\\d:]+(?:\\.\\d+)?(?:Z|[+-]\\d\\d:\\d\\d) alice@a\\.test message 0$`, 'm');
  assert.match(listed, msg);
  const box = join(boxes, 'bob', 'new', id);
  const size = readdirSync(box, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && !e.name.startsWith('.digest')) // the content digest beside the entries is not one of them
    .reduce((n, e) => n + readFileSync(join(e.parentPath, e.name)).length, 0);
  assert.equal(Number(msg.exec(listed)![1]), size, 'size is the sum of the entry sizes');
  assert.match(listed, /^OK 1$/m);
  const got = await converse(s.port, ['LOGIN bob sesame', `FETCH ${id}`, 'QUIT'], /^BYE/m);
  const m = /^MESSAGE (\S+) (\d+)\n/m.exec(got)!;
  assert.equal(m[1], id);
  const tar = Buffer.from(got.slice(m.index + m[0].length, m.index + m[0].length + Number(m[2])), 'latin1');
  assert.equal(tar.length, Number(m[2]));
  const entries = readMessage(Readable.from([tar]));
  const first = await entries.next();
  assert.ok(!first.done && first.value.kind === 'headers');
  assert.equal(first.value.headers.get('message-id'), `urn:uuid:${id}`);
  await entries.return(undefined);
  assert.match(got.slice(m.index + m[0].length + Number(m[2])), /^BYE/, 'nothing but the tar between MESSAGE and the next answer');
});

test('post-office: SIGHUP re-reads the config (a new user logs in); a bad config is refused and the old one kept', async () => {
  const file = await poConfig();
  const s = await postOffice(file);
  assert.match(await converse(s.port, ['LOGIN carol sesame'], /^NO/m), /^NO login failed$/m);
  writeFileSync(
    file,
    readFileSync(file, 'utf8') +
      `[users.carol]\nmailbox = "${join(boxes, 'carol')}"\npassword = "${/password = "(\S+)"/.exec(readFileSync(file, 'utf8'))![1]}"\n`,
  );
  s.proc.kill('SIGHUP');
  await s.waitLog(/reloaded configuration and certificates/);
  assert.match(await converse(s.port, ['LOGIN carol sesame'], /^(OK|NO)/m), /^OK logged in as carol$/m);
  writeFileSync(file, 'name = 42\n');
  s.proc.kill('SIGHUP');
  await s.waitLog(/reload failed, keeping the old configuration: .*name/);
  assert.match(await converse(s.port, ['LOGIN carol sesame'], /^(OK|NO)/m), /^OK logged in as carol$/m, 'still serving with the last good config');
});

/** post-office under systemd-socket-activate, stopped after the tests. */
async function activate(activateArgs: string[], args: string[]): Promise<Activated> {
  const a = await socketActivate('post-office', activateArgs, ['--config', await poConfig(), ...args]);
  children.push(a.child);
  return a;
}

const login = (port: number) => converse(port, ['LOGIN bob sesame', 'FOLDERS', 'QUIT'], /^BYE/m);

test('systemd-socket-activate --inetd runs post-office --inetd once per connection', async () => {
  await deliver('bob', 1);
  const { port, child } = await activate(['--accept', '--inetd'], ['--inetd']);
  assert.match(await login(port), /^IMRP 1 b\.test\nOK logged in as bob\nFOLDER new \d+\nFOLDER cur \d+\nOK\nBYE/);
  assert.match(await login(port), /^OK logged in as bob$/m);
  child.kill('SIGTERM');
  await once(child, 'exit');
});

test('systemd-socket-activate hands post-office a listening socket (LISTEN_FDS); SIGTERM stops it cleanly', async () => {
  const { port, child, err } = await activate([], []);
  assert.match(await login(port), /^OK logged in as bob$/m);
  assert.match(await login(port), /^OK logged in as bob$/m, 'the same process serves the next connection');
  assert.match(err(), new RegExp(`post-office: listening on 127\\.0\\.0\\.1:${port}\\n`));
  child.kill('SIGTERM');
  const [code] = await once(child, 'exit');
  assert.equal(code, 0, err());
});
