// server-receive with real peers: systemd-socket-activate (inetd and
// LISTEN_FDS modes) and openssl s_client.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { BIN, runCommand, testEnv } from '../helpers.js';
import { HANDLER, certs, config, connect, dir, headersOf, message, basicFields, outDir, pki, startServer } from '../imdp-fixture.js';

const children: ChildProcess[] = [];
after(() => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
});

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((res) => s.listen(0, '127.0.0.1', () => res()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((res) => s.close(() => res()));
  return port;
}

async function activate(extraArgs: string[], serverArgs: string[], out: string): Promise<{ port: number; child: ChildProcess; err: () => string }> {
  const file = join(dir, `activated-${extraArgs.join('')}.toml`);
  writeFileSync(file, config({ handler: ['node', HANDLER, 'ok', out] }));
  const port = await freePort();
  // It passes on only the variables it is told to: IMA_ALLOW_ROOT for a root CI (see testEnv).
  const child = spawn(
    'systemd-socket-activate',
    [`--listen=127.0.0.1:${port}`, '--setenv=IMA_ALLOW_ROOT=1', ...extraArgs, join(BIN, 'server-receive'), '--config', file, ...serverArgs],
    {
      env: testEnv(),
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  children.push(child);
  let err = '';
  await new Promise<void>((res, rej) => {
    child.stderr!.on('data', (d) => {
      err += d;
      if (/Listening on/.test(err)) res();
    });
    child.on('exit', (c) => rej(new Error(`systemd-socket-activate exited ${c}: ${err}`)));
  });
  return { port, child, err: () => err };
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
