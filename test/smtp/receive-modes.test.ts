// smtp-receive's listening modes through systemd-socket-activate (inetd and
// LISTEN_FDS), SIGTERM finishing cleanly, and SIGHUP reloading users and
// certificates while a bad config is kept out.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { type Activated, childrenOf, pidGone, runCommand, socketActivate } from '../helpers.js';
import { MX_EXTRA, arrival, config, dir, hash, pki, raw, startReceive, stored, swaks } from './receive-fixture.js';

const children: ChildProcess[] = [];
after(() => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
});

async function activate(extra: string[], serverArgs: string[]): Promise<Activated> {
  const file = config(`activated${extra.join('')}`, MX_EXTRA);
  const activated = await socketActivate('smtp-receive', extra, ['--config', file, ...serverArgs], { IMA_CONFIG_DIR: dir });
  children.push(activated.child);
  return activated;
}

const deliver = (port: number, body: string) => swaks(port, ['--from', 'alice@a.test', '--to', 'bob@b.test', '--body', body]);

describe('smtp-receive modes and signals', () => {
  it('runs once per connection under systemd-socket-activate --inetd', async () => {
    const n = stored('bob').length;
    const { port, child } = await activate(['--accept', '--inetd'], ['--inetd']);
    assert.match((await deliver(port, 'inetd one')).out, /250 2\.0\.0 accepted/);
    assert.match((await deliver(port, 'inetd two')).out, /250 2\.0\.0 accepted/);
    await arrival('bob', n + 2);
    child.kill('SIGTERM');
    await once(child, 'exit');
  });

  it('serves the socket systemd hands it (LISTEN_FDS); SIGTERM stops it cleanly', async () => {
    const { port, child, err } = await activate([], []);
    assert.match((await deliver(port, 'socket activated')).out, /250 2\.0\.0 accepted/);
    child.kill('SIGTERM');
    const [code] = (await once(child, 'exit')) as [number];
    assert.equal(code, 0, err());
    assert.ok(err().includes(`smtp-receive: listening on 127.0.0.1:${port}\n`), err()); // the socket systemd made, not the config's
  });

  it('workers = 2 on the socket systemd hands it: both worker processes serve it, SIGTERM stops them all (exit 0)', async () => {
    const n = stored('bob').length;
    const file = config('activated-workers', MX_EXTRA, 'workers = 2');
    const { port, child, err, waitErr } = await socketActivate('smtp-receive', [], ['--config', file], { IMA_CONFIG_DIR: dir });
    children.push(child);
    // It starts the server at the first connection: these six are what wake it.
    const sent = await Promise.all(Array.from({ length: 6 }, (_, i) => deliver(port, `worker message ${i}`)));
    for (const r of sent) assert.match(r.out, /250 2\.0\.0 accepted/);
    await waitErr(/2 workers serving/);
    assert.equal(err().split(`smtp-receive: listening on 127.0.0.1:${port}\n`).length - 1, 2, err()); // the socket systemd made
    const workers = childrenOf(child.pid!);
    assert.equal(workers.length, 2, err());
    await arrival('bob', n + 6);
    child.kill('SIGTERM');
    const [code] = (await once(child, 'exit')) as [number];
    assert.equal(code, 0, err());
    for (const pid of workers) assert.ok(pidGone(pid), `worker ${pid} left running`);
  });

  it('SIGHUP reloads the users; a bad config is logged and the old one kept', async () => {
    const users = async (name: string) => `[submission.users.${name}]\npassword = "${await hash('pw')}"\nsenders = ["${name}@b.test"]\n`;
    const file = config('hup', `[submission]\ncommand = ["send-mail"]\n${await users('alice')}`, 'role = "submission"');
    const srv = await startReceive(file);
    try {
      const login = (user: string) => swaks(srv.port, ['--tls', '--auth', 'PLAIN', '--auth-user', user, '--auth-password', 'pw', '--quit-after', 'AUTH']);
      assert.match((await login('carol')).out, /535 5\.7\.8/);
      config('hup', `[submission]\ncommand = ["send-mail"]\n${await users('carol')}`, 'role = "submission"');
      const reloaded = new Promise<void>((res) => srv.proc.stderr!.on('data', () => /reloaded configuration/.test(srv.log()) && res()));
      srv.proc.kill('SIGHUP');
      await reloaded;
      assert.match((await login('carol')).out, /235 2\.7\.0/);
      writeFileSync(file, 'hostname = 7\n');
      const refused = new Promise<void>((res) => srv.proc.stderr!.on('data', () => /reload failed, keeping the old configuration/.test(srv.log()) && res()));
      srv.proc.kill('SIGHUP');
      await refused;
      assert.match((await login('carol')).out, /235 2\.7\.0/);
    } finally {
      await srv.stop();
    }
  });

  it('SIGHUP: a new max_message_bytes is the SIZE announced and the limit enforced alike; a new max_command_line holds for new connections', async () => {
    const limit = (bytes: string, line = 512) => config('hup-size', `[limits]\nmax_message_bytes = ${bytes}\nmax_command_line = ${line}\n${MX_EXTRA}`);
    const file = limit('2048');
    const srv = await startReceive(file);
    try {
      const n = stored('bob').length;
      const send = () =>
        raw(srv.port, [
          { until: /^220 /m },
          { send: 'EHLO client.a.test\r\n', until: /^250 /m },
          { send: 'MAIL FROM:<alice@a.test> SIZE=7000\r\n', until: /^(250|552) .*\r\n/m },
          { send: 'QUIT\r\n', until: /^221 /m },
        ]);
      const longLine = () => raw(srv.port, [{ until: /^220 /m }, { send: `NOOP ${'x'.repeat(700)}\r\n`, until: /^(250|421) .*\r\n/m }]);
      let r = await send();
      assert.match(r, /^250[- ]SIZE 2048\r$/m);
      assert.match(r, /^552 5\.3\.4 /m);
      assert.match(await longLine(), /^421 4\.4\.2 /m);
      limit('"100K"', 1024);
      const reloaded = new Promise<void>((res) => srv.proc.stderr!.on('data', () => /reloaded configuration/.test(srv.log()) && res()));
      srv.proc.kill('SIGHUP');
      await reloaded;
      r = await send();
      assert.match(r, /^250[- ]SIZE 102400\r$/m);
      assert.match(r, /^250 2\.1\.0 /m);
      assert.match(await longLine(), /^250 /m);
      const big = await swaks(srv.port, ['--from', 'alice@a.test', '--to', 'bob@b.test', '--body', 'x'.repeat(7000)]);
      assert.match(big.out, /250 2\.0\.0 accepted as/);
      assert.equal(stored('bob').length, n + 1);
    } finally {
      await srv.stop();
    }
  });

  it('SIGHUP reads the certificate files again: STARTTLS then shows the new certificate (openssl s_client)', async () => {
    const [first, second] = [pki.server('mx.b.test', { file: 'hup-cert-1' }), pki.server('mx.b.test', { file: 'hup-cert-2' })];
    const certFile = join(dir, 'hup-live.crt');
    const keyFile = join(dir, 'hup-live.key');
    copyFileSync(first.cert, certFile);
    copyFileSync(first.key, keyFile);
    const file = join(dir, 'hup-cert.toml');
    writeFileSync(file, `hostname = "mx.b.test"\n[tls]\ncertificate = ${JSON.stringify(certFile)}\nkey = ${JSON.stringify(keyFile)}\n${MX_EXTRA}`);
    const srv = await startReceive(file);
    try {
      const shown = async () => {
        const r = await runCommand('openssl', ['s_client', '-connect', `127.0.0.1:${srv.port}`, '-starttls', 'smtp', '-servername', 'mx.b.test'], {
          input: '',
        });
        const pem = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(r.stdout.toString());
        assert.ok(pem, `openssl s_client showed no certificate:\n${r.stdout}${r.stderr}`);
        return new X509Certificate(pem[0]).fingerprint256;
      };
      const fingerprint = (f: string) => new X509Certificate(readFileSync(f)).fingerprint256;
      assert.equal(await shown(), fingerprint(first.cert));
      copyFileSync(second.cert, certFile);
      copyFileSync(second.key, keyFile);
      const reloaded = new Promise<void>((res) => srv.proc.stderr!.on('data', () => /reloaded configuration/.test(srv.log()) && res()));
      srv.proc.kill('SIGHUP');
      await reloaded;
      assert.equal(await shown(), fingerprint(second.cert));
    } finally {
      await srv.stop();
    }
  });
});
