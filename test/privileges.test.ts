// Root (privileges.ts): servers and delivery stages refuse it (exit 77, one
// line), unless IMA_ALLOW_ROOT=1; a server with `user` binds as root and then
// becomes that user. Needs root to test at all (CI runs as root).
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { type Listening, runBin, startListening, tempDir, testEnv } from './helpers.js';
import { type Server, basicFields, certs, config, connect, dir, message, pki, startServer } from './imdp-fixture.js';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (run as root to check the refusal and the privilege drop)';
const asRoot = testEnv({ IMA_ALLOW_ROOT: undefined });
const servers: (Server | Listening)[] = [];

/** Wait (with a deadline) for a line in a server's log. */
async function logged(s: Listening, re: RegExp): Promise<void> {
  const deadline = AbortSignal.timeout(10_000);
  while (!re.test(s.log())) await once(s.proc.stderr!, 'data', { signal: deadline });
}

after(async () => Promise.all(servers.map((s) => s.stop())));

test(
  'privileges: as root without IMA_ALLOW_ROOT, give-recipient, handle-incoming-mail and server-receive exit 77 with one line, doing nothing',
  { skip },
  async () => {
    const box = tempDir();
    const msg = await message(basicFields());
    let r = await runBin('give-recipient', ['--create', join(box, 'mbox')], { input: msg, env: asRoot });
    assert.equal(r.code, 77, r.stderr);
    assert.equal(r.stderr, 'give-recipient: refusing to run as root: run it as a mail user, set "user" in a server\'s config, or set IMA_ALLOW_ROOT=1\n');
    assert.equal(r.stdout.length, 0);
    assert.deepEqual(readdirSync(box), [], 'no mailbox created');
    r = await runBin('handle-incoming-mail', ['--check', 'bob@b.test'], { env: asRoot });
    assert.equal(r.code, 77, r.stderr);
    const file = join(dir, 'root.toml');
    writeFileSync(file, config());
    r = await runBin('server-receive', ['--config', file, '--listen', '127.0.0.1:0'], { env: asRoot });
    assert.equal(r.code, 77, r.stderr);
    assert.match(r.stderr, /^server-receive: refusing to run as root/);
    // --check-config still works as root: checking a config is not serving.
    r = await runBin('server-receive', ['--config', file, '--check-config'], { env: asRoot });
    assert.equal(r.code, 0, r.stderr);
  },
);

test('privileges: server-receive with user = "nobody" binds as root, then runs as nobody and serves', { skip }, async () => {
  const s = await startServer(`user = "nobody"\n${config()}`, { env: asRoot });
  servers.push(s);
  // The switch comes right after the "listening on" line: wait for its own line.
  await logged(s, /running as nobody/);
  const status = readFileSync(`/proc/${s.proc.pid}/status`, 'utf8');
  assert.match(status, /^Uid:\t65534\t65534\t65534\t65534$/m);
  assert.match(status, /^Gid:\t65534\t65534\t65534\t65534$/m);
  assert.match(s.stderr(), /running as nobody \(uid 65534, gid 65534\)/);
  const c = await connect(s.port);
  assert.equal(c.serverDomain, 'b.test');
  await c.done();
  const file = join(dir, 'bad-user.toml');
  writeFileSync(file, `user = "no-such-user-here"\n${config()}`);
  const r = await runBin('server-receive', ['--config', file, '--listen', '127.0.0.1:0'], { env: asRoot });
  assert.equal(r.code, 78, r.stderr);
  assert.match(r.stderr, /bad-user\.toml: user: no such user: no-such-user-here/);
});

test('privileges: smtp-receive with user = "nobody" binds as root, then runs as nobody and greets', { skip }, async () => {
  const file = join(dir, 'smtp-user.toml');
  writeFileSync(file, `user = "nobody"\nhostname = "b.test"\n[tls]\ncertificate = "${certs.b.cert}"\nkey = "${certs.b.key}"\n[mx]\nverdicts = false\n`);
  const smtp = await startListening('smtp-receive', ['--config', file, '--listen', '127.0.0.1:0'], { env: asRoot });
  servers.push(smtp);
  await logged(smtp, /running as nobody \(uid 65534, gid 65534\)/);
  const status = readFileSync(`/proc/${smtp.proc.pid}/status`, 'utf8');
  assert.match(status, /^Uid:\t65534\t65534\t65534\t65534$/m);
  const socket = createConnection(smtp.port, '127.0.0.1');
  const [greeting] = (await once(socket, 'data')) as [Buffer];
  socket.destroy();
  assert.match(greeting.toString(), /^220 b\.test /);
  writeFileSync(file, `user = "no-such-user-here"\nhostname = "b.test"\n[tls]\ncertificate = "${certs.b.cert}"\nkey = "${certs.b.key}"\n`);
  const r = await runBin('smtp-receive', ['--config', file, '--listen', '127.0.0.1:0'], { env: asRoot });
  assert.equal(r.code, 78, r.stderr);
  assert.match(r.stderr, /smtp-user\.toml: user: no such user: no-such-user-here/);
});

test('privileges: post-office with user = "nobody" binds as root, then runs as nobody', { skip }, async () => {
  const file = join(dir, 'po-user.toml');
  writeFileSync(
    file,
    `user = "nobody"
[tls]
certificate = "${certs.b.cert}"
key = "${certs.b.key}"
ca = ["${pki.caFile}"]
[users.bob]
mailbox = "${join(tempDir(), 'bob')}"
certificate_name = "bob"
`,
  );
  const po = await startListening('post-office', ['--config', file, '--listen', '127.0.0.1:0'], { env: asRoot });
  servers.push(po);
  await logged(po, /running as nobody/);
  const status = readFileSync(`/proc/${po.proc.pid}/status`, 'utf8');
  assert.match(status, /^Uid:\t65534\t65534\t65534\t65534$/m);
  assert.match(status, /^Gid:\t65534\t65534\t65534\t65534$/m);
});
