// Fixtures for IMRP tests: a PKI for b.test and the user bob, a post-office
// config written here, mailboxes filled by the real make-message and
// give-recipient, and a raw IMRP conversation over TLS.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import tls, { type TLSSocket } from 'node:tls';
import { runBin, tempDir } from './helpers.js';
import { Pki } from './pki.js';

export const dir = tempDir('ima-imrp-');
export const pki = new Pki(dir);
export const server = pki.server('b.test');
export const boxes = join(dir, 'mail');
/** The scrypt hash of "sesame", made once by post-office --hash-password. */
let hash: string | undefined;

export async function passwordHash(): Promise<string> {
  hash ??= (await runBin('post-office', ['--hash-password'], { input: 'sesame\n' })).stdout.toString().trim();
  return hash;
}

let configs = 0;
/** Write a post-office config for bob (password "sesame"), with extra TOML appended; returns its path. */
export async function poConfig(extra = ''): Promise<string> {
  const file = join(dir, `post-office-${configs++}.toml`);
  writeFileSync(
    file,
    `name = "b.test"
[tls]
certificate = "${server.cert}"
key = "${server.key}"
ca = ["${pki.caFile}"]
[users.bob]
mailbox = "${join(boxes, 'bob')}"
password = "${await passwordHash()}"
${extra}
`,
  );
  return file;
}

/** Deliver n messages to a user's mailbox (with make-message's extra arguments); their ids. */
export async function deliver(user: string, n: number, extra: string[] = []): Promise<string[]> {
  for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(boxes, user, f), { recursive: true });
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const m = await runBin('make-message', ['-r', 'alice@a.test', '-s', `message ${i}`, '--text', `hello ${i}\n`, ...extra, `${user}@b.test`], { cwd: dir });
    assert.equal(m.code, 0, m.stderr);
    const g = await runBin('give-recipient', [join(boxes, user)], { input: m.stdout });
    assert.equal(g.code, 0, g.stderr);
    ids.push(/message-id: urn:uuid:(\S+)/.exec(m.stdout.toString('latin1'))![1]);
  }
  return ids;
}

/** A TLS connection to a post-office, greeted. */
export async function open(port: number, localAddress?: string): Promise<TLSSocket> {
  const raw = net.connect({ host: '127.0.0.1', port, localAddress });
  raw.on('error', () => {});
  const s = tls.connect({ socket: raw, servername: 'b.test', ca: readFileSync(pki.caFile) });
  s.on('error', () => {});
  await once(s, 'secureConnect');
  return s;
}

/** Collect what the server says until `until` matches or it closes; fails after `deadline` ms. */
export function until(s: TLSSocket, re: RegExp, deadline = 20_000): Promise<string> {
  let got = '';
  return new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`no ${re} within ${deadline} ms; got ${JSON.stringify(got.slice(0, 300))}`)), deadline);
    const check = () => {
      if (re.test(got)) done();
    };
    const done = () => {
      clearTimeout(timer);
      s.off('data', onData);
      res(got);
    };
    const onData = (d: Buffer) => {
      got += d.toString('latin1');
      check();
    };
    s.on('data', onData);
    s.once('close', done);
  });
}

/** A raw IMRP conversation: send lines, collect what the server says until it closes or `re` matches. */
export async function converse(port: number, lines: string[], re: RegExp): Promise<string> {
  const s = await open(port);
  const got = until(s, re);
  s.write(lines.map((l) => `${l}\n`).join(''));
  const text = await got;
  s.destroy();
  return text;
}
