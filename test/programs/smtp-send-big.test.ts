// smtp-send keeps memory flat: the message is spooled (IMA parts, then its
// MIME form), signed and sent as streams, whatever its size.
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { BIN, runCommand, tempDir, testEnv } from '../helpers.js';
import { smtpSinkMissing, startSink } from '../smtp-sink.js';

test(
  'smtp-send: a 48 MB attachment streams through (spooled, signed, sent) in bounded memory',
  { skip: smtpSinkMissing ?? (existsSync('/usr/bin/time') ? undefined : 'no /usr/bin/time') },
  async () => {
    const s = await startSink([]);
    after(() => s.stop());
    const src = join(tempDir('ima-big-'), 'm');
    mkdirSync(join(src, 'attachments'), { recursive: true });
    writeFileSync(join(src, 'headers'), 'from: alice@a.test\nto: x@sink.test\nsubject: big\n');
    writeFileSync(join(src, 'body'), 'See the attachment.\n');
    const fh = openSync(join(src, 'attachments', 'big.bin'), 'w');
    for (let i = 0; i < 48; i++) writeSync(fh, randomBytes(1024 * 1024));
    closeSync(fh);
    const ima = join(src, '..', 'big.ima');
    assert.equal((await runCommand('tar', ['cf', ima, '-C', src, 'headers', 'body', 'attachments'])).code, 0);
    const key = join(src, '..', 'dkim.key');
    writeFileSync(key, generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const cfg = join(src, '..', 'smtp-send.toml');
    writeFileSync(
      cfg,
      `dns_servers = ["127.0.0.1:9"]\n[smarthost]\nhost = "127.0.0.1:${s.port}"\ntls = "may"\n[[dkim]]\ndomain = "a.test"\nselector = "s"\nkey = "${key}"\n`,
    );
    const r = await runCommand('/usr/bin/time', ['-f', 'maxrss=%M', join(BIN, 'smtp-send'), '--config', cfg, '--file', ima, 'x@sink.test'], { env: testEnv() });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.toString(), 'OK x@sink.test\n');
    const kb = Number(/maxrss=(\d+)/.exec(r.stderr)![1]);
    // The message is 48 MB as IMA and 65 MB as MIME; held whole, the process would pass 190 MB (a small one takes about 80 MB).
    assert.ok(kb < 160 * 1024, `max RSS ${Math.round(kb / 1024)} MB`);
  },
);
