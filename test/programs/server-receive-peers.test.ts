// server-receive with real peers: systemd-socket-activate (inetd and
// LISTEN_FDS modes) and openssl s_client.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { type Activated, runCommand, socketActivate } from '../helpers.js';
import { HANDLER, certs, config, connect, dir, headersOf, message, basicFields, outDir, pki, startServer } from '../imdp-fixture.js';

const children: ChildProcess[] = [];
after(() => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
});

/** server-receive under systemd-socket-activate with a handler writing into `out`, stopped after the tests. */
async function activate(activateArgs: string[], serverArgs: string[], out: string): Promise<Activated> {
  const file = join(dir, `activated-${activateArgs.join('')}.toml`);
  writeFileSync(file, config({ handler: ['node', HANDLER, 'ok', out] }));
  const a = await socketActivate('server-receive', activateArgs, ['--config', file, ...serverArgs]);
  children.push(a.child);
  return a;
}

async function oneMessage(port: number): Promise<string> {
  const c = await connect(port);
  const tar = await message(basicFields());
  c.sendMail(headersOf(tar), tar.length);
  assert.equal((await c.readAnswer()).word, 'ACCEPT');
  await c.sendData(tar, tar.length);
  const r = await c.readResult();
  await c.done();
  return r.word;
}

test('systemd-socket-activate --inetd runs server-receive --inetd once per connection', async () => {
  const out = outDir();
  const { port, child } = await activate(['--accept', '--inetd'], ['--inetd'], out);
  assert.equal(await oneMessage(port), 'OK');
  assert.equal(await oneMessage(port), 'OK');
  assert.equal(readdirSync(out).filter((f) => f.endsWith('.ima')).length, 2);
  child.kill('SIGTERM');
  await once(child, 'exit');
});

test('systemd-socket-activate hands server-receive a listening socket (LISTEN_FDS); SIGTERM stops it cleanly', async () => {
  const out = outDir();
  const { port, child, err } = await activate([], [], out);
  assert.equal(await oneMessage(port), 'OK');
  assert.equal(await oneMessage(port), 'OK', 'the same server process serves the next connection');
  assert.match(err(), new RegExp(`server-receive: listening on 127\\.0\\.0\\.1:${port}\\n`));
  child.kill('SIGTERM');
  const [code] = await once(child, 'exit');
  assert.equal(code, 0, err());
  assert.equal(readdirSync(out).filter((f) => f.endsWith('.ima')).length, 2);
});

test('openssl s_client: refused without a certificate, greeted with one', async () => {
  const s = await startServer(config());
  try {
    const base = [
      's_client',
      '-connect',
      `127.0.0.1:${s.port}`,
      '-servername',
      'b.test',
      '-CAfile',
      pki.caFile,
      '-verify_return_error',
      '-verify_hostname',
      'b.test',
      '-quiet',
      '-ign_eof',
    ];
    const without = await runCommand('openssl', base, { input: '' });
    assert.match(
      without.stdout.toString(),
      /^BYE no client certificate: this server requires one \(mutual TLS\); public CAs stopped issuing clientAuth certificates in 2026/,
    );
    assert.doesNotMatch(without.stdout.toString(), /IMDP 1/);
    const withCert = await runCommand('openssl', [...base, '-cert', certs.a.cert, '-key', certs.a.key], { input: 'HELO\nDONE\n' });
    assert.match(withCert.stdout.toString(), /^IMDP 1 b\.test\nERROR unknown command "HELO".*\nBYE goodbye\n$/);
  } finally {
    await s.stop();
  }
});
