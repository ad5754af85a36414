// Shared set-up for the smtp-receive tests: a certificate for mx.b.test,
// mailboxes for bob and carol behind handle-incoming-mail and give-recipient,
// configs written on demand, servers started as real processes, and swaks.
import { mkdirSync, readFileSync, readdirSync, watch, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { type Listening, runCommand, startListening, tempDir, testEnv } from '../helpers.js';
import { Pki } from '../pki.js';
import { hashPassword } from '../../src/password.js';

export const dir = tempDir('ima-smtp-');
export const pki = new Pki(dir);
export const cert = pki.server('mx.b.test');
export const boxes = join(dir, 'mail');
for (const u of ['bob', 'carol']) for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(boxes, u, f), { recursive: true });

writeFileSync(
  join(dir, 'handle-incoming-mail.toml'),
  `[domains."b.test"]
command = ["give-recipient", "--address", "{address}", ${JSON.stringify(join(boxes, '{local}'))}]
users = ["bob", "carol"]
`,
);

export const env = testEnv({ IMA_CONFIG_DIR: dir });

/** Write an smtp-receive config; `extra` is appended (its own tables). */
export function config(name: string, extra = '', top = ''): string {
  const file = join(dir, `${name}.toml`);
  writeFileSync(
    file,
    `hostname = "mx.b.test"
${top}
[tls]
certificate = ${JSON.stringify(cert.cert)}
key = ${JSON.stringify(cert.key)}
${extra}
`,
  );
  return file;
}

/** The mx config the tests share: no DNS reachable (verdicts come out temperror, quickly). */
export const MX_EXTRA = `[mx]
dns_servers = ["127.0.0.1:9"]
`;

export function startReceive(file: string, args: string[] = []): Promise<Listening> {
  return startListening('smtp-receive', ['--config', file, '--listen', '127.0.0.1:0', ...args], { env });
}

/** Message directories in a mailbox's new/. */
export const stored = (user: string) => readdirSync(join(boxes, user, 'new'));
export const headersOf = (user: string, id: string) => readFileSync(join(boxes, user, 'new', id, 'headers'), 'utf8');

/** Run swaks against a port; returns its whole transcript. */
export async function swaks(port: number, args: string[]): Promise<{ code: number | null; out: string }> {
  const r = await runCommand('swaks', ['--server', `127.0.0.1:${port}`, '--helo', 'client.a.test', '--timeout', '30', ...args]);
  return { code: r.code, out: r.stdout.toString() + r.stderr };
}

/** Server replies in a swaks transcript ("<-" and "<~" lines, "*" marks an error). */
export const replies = (out: string) =>
  out
    .split('\n')
    .filter((l) => /^<[-~]\*? /.test(l))
    .map((l) => l.replace(/^<[-~]\*? +/, ''));

export const hash = (pw: string) => hashPassword(pw);

/** Resolve when user's new/ holds at least n messages (fs.watch, with a deadline). */
export function arrival(user: string, n: number, ms = 30_000): Promise<void> {
  const where = join(boxes, user, 'new');
  return new Promise((res, rej) => {
    const watcher = watch(where);
    const done = (e?: Error) => {
      clearTimeout(t);
      watcher.close();
      if (e) rej(e);
      else res();
    };
    const t = setTimeout(() => done(new Error(`no message ${n} in ${where} after ${ms} ms`)), ms);
    const check = () => {
      if (stored(user).length >= n) done();
    };
    watcher.on('change', check);
    watcher.on('error', done);
    check();
  });
}

/** A raw SMTP connection (from `localAddress`, e.g. 127.0.0.2, to tell clients apart): write bytes, wait for replies. */
export function smtpClient(port: number, localAddress = '127.0.0.1') {
  const s = net.connect({ port, host: '127.0.0.1', localAddress });
  let got = '';
  s.on('data', (d: Buffer) => (got += d));
  s.on('error', () => {});
  // Not events.once: that rejects on 'error', and a test need not wait for the close.
  const closed = new Promise<void>((res) => s.once('close', () => res()));
  return {
    /** Everything the server has said so far. */
    got: () => got,
    send: (data: string) => void s.write(data),
    /** Resolve when what the server said matches re (or it closed and it does), else fail after 20 s. */
    until: (re: RegExp) =>
      new Promise<void>((res, rej) => {
        const check = () => {
          if (!re.test(got)) return;
          clearTimeout(t);
          s.off('data', check);
          s.off('close', check);
          res();
        };
        const t = setTimeout(() => {
          s.off('data', check);
          s.off('close', check);
          rej(new Error(`no ${re} in ${JSON.stringify(got)}`));
        }, 20_000);
        s.on('data', check);
        s.on('close', check);
        check();
      }),
    /** Resolves when the connection is closed (by the server, or by end()); fails after 20 s. */
    closed: () =>
      new Promise<void>((res, rej) => {
        const t = setTimeout(() => rej(new Error(`the connection is still open after 20 s; the server said ${JSON.stringify(got)}`)), 20_000);
        void closed.then(() => {
          clearTimeout(t);
          res();
        });
      }),
    async end() {
      s.end();
      await closed;
    },
  };
}

/** A raw SMTP client: send bytes, read until a reply line matching `until` (with a deadline); the transcript. */
export async function raw(port: number, steps: { send?: string; until: RegExp }[]): Promise<string> {
  const c = smtpClient(port);
  for (const step of steps) {
    if (step.send !== undefined) c.send(step.send);
    await c.until(step.until);
  }
  await c.end();
  return c.got();
}
