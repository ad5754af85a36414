// `npm run demo`: two domains on loopback. A CA and certificates for a.test
// and b.test; b.test's server-receive on a free port; a message with an
// attachment composed at a.test and sent with send-mail over mutual TLS;
// what landed in bob@b.test's mailbox; everything stopped again.
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
const BIN = join(ROOT, 'bin');
const dir = mkdtempSync(join(tmpdir(), 'ima-demo-'));
// IMA_ALLOW_ROOT: the demo may run as root (a container); the servers would refuse otherwise.
const env: Record<string, string | undefined> = { PATH: process.env.PATH, HOME: dir, IMA_CONFIG_DIR: join(dir, 'nowhere'), IMA_ALLOW_ROOT: '1' };
const show = (p: string) => relative(dir, p) || '.';

function say(text: string): void {
  console.log(`\n# ${text}`);
}

async function run(name: string, args: string[], input?: Buffer, tool = true): Promise<Buffer> {
  console.log(`$ ${[name, ...args.map((a) => (a.startsWith(dir) ? show(a) : a))].map((a) => (/[\s'"]/.test(a) ? JSON.stringify(a) : a)).join(' ')}`);
  const child = spawn(tool ? join(BIN, name) : name, args, { env, cwd: dir, stdio: ['pipe', 'pipe', 'inherit'] });
  const out: Buffer[] = [];
  child.stdout.on('data', (c: Buffer) => out.push(c));
  child.stdin.end(input);
  const [code] = await once(child, 'exit');
  if (code !== 0) throw new Error(`${name} exited ${code}`);
  return Buffer.concat(out);
}

/**
 * b.test's delivery chain: handle-incoming-mail routes every address of
 * b.test to give-recipient, whose mailbox is mailboxes/<local part>.
 */
function handlerConfig(mailboxes: string): string {
  const cfg = join(dir, 'b', 'handle-incoming-mail.toml');
  writeFileSync(
    cfg,
    `[domains."b.test"]\ncommand = ["give-recipient", "--address", "{address}", ${JSON.stringify(join(mailboxes, '{local}'))}]\nusers = ["bob"]\n`,
  );
  return cfg;
}

async function startServer(config: string, program = 'server-receive'): Promise<{ proc: ChildProcess; port: number }> {
  console.log(`$ ${program} --config ${show(config)} --listen 127.0.0.1:0 &`);
  const proc = spawn(join(BIN, program), ['--config', config, '--listen', '127.0.0.1:0'], { env, stdio: ['ignore', 'inherit', 'pipe'] });
  let err = '';
  const port = await new Promise<number>((res, rej) => {
    proc.stderr!.on('data', (d: Buffer) => {
      process.stderr.write(d);
      err += d;
      const m = /listening on [^\n]*:(\d+)\n/.exec(err);
      if (m) res(Number(m[1]));
    });
    proc.on('exit', (code) => rej(new Error(`${program} exited ${code}`)));
  });
  return { proc, port };
}

function tree(root: string, indent = '  '): void {
  for (const name of readdirSync(root).sort()) {
    const p = join(root, name);
    const st = statSync(p);
    console.log(`${indent}${name}${st.isDirectory() ? '/' : `  (${st.size} bytes)`}`);
    if (st.isDirectory()) tree(p, `${indent}  `);
  }
}

/** b.test's post-office serves bob's mailbox; bob fetches his mail with fetch-mail and reads the attachment as a plain file. */
async function fetchAsBob(mailboxes: string): Promise<void> {
  say("bob's password, stored only as a scrypt hash in b.test's post-office config");
  const hash = (await run('post-office', ['--hash-password'], Buffer.from('correct horse\n'))).toString().trim();
  console.log(hash);
  const poConfig = join(dir, 'b', 'post-office.toml');
  writeFileSync(
    poConfig,
    `name = "b.test"\n[tls]\ncertificate = "../b.test.crt"\nkey = "../b.test.key"\nca = ["../ca/ca.crt"]\n[users.bob]\nmailbox = ${JSON.stringify(join(mailboxes, 'bob'))}\npassword = "${hash}"\n`,
  );
  say("b.test's post-office on loopback");
  const po = await startServer(poConfig, 'post-office');
  try {
    say('bob fetches his mail into ~/Mail with fetch-mail (password from the environment, never argv)');
    const fmConfig = join(dir, 'bob', 'fetch-mail.toml');
    mkdirSync(join(dir, 'bob'), { recursive: true });
    writeFileSync(fmConfig, `server = "127.0.0.1"\nserver_name = "b.test"\nport = ${po.port}\nuser = "bob"\nca = ["../ca/ca.crt"]\nmailbox = "Mail"\n`);
    env.IMA_PASSWORD = 'correct horse';
    await run('fetch-mail', ['--config', fmConfig, '--verbose']);
    delete env.IMA_PASSWORD;
    const mail = join(dir, 'bob', 'Mail');
    tree(mail);
    const [id] = readdirSync(join(mail, 'new'));
    const att = readFileSync(join(mail, 'new', id, 'attachments', 'notes.txt'));
    if (!att.equals(readFileSync(join(dir, 'notes.txt')))) throw new Error('the attachment changed on the way');
    console.log(`\n$ cat ${show(join(mail, 'new', id, 'attachments', 'notes.txt'))}\n${att.toString().trimEnd()}`);
    console.log(`\nThe attachment arrived byte for byte (${att.length} bytes), a plain file in bob's own mailbox; the server's copy is gone:`);
    tree(join(mailboxes, 'bob'));
  } finally {
    po.proc.kill('SIGTERM');
    await once(po.proc, 'exit');
  }
}

async function main(): Promise<void> {
  const t0 = performance.now();
  console.log(`Working in ${dir}`);
  say('A private CA for the federation (public CAs stopped issuing clientAuth certificates in 2026)');
  await run('make-cert', ['ca', join(dir, 'ca')]);
  await run('make-cert', ['server', '--ca', join(dir, 'ca'), '--out', dir, 'a.test']);
  await run('make-cert', ['server', '--ca', join(dir, 'ca'), '--out', dir, 'b.test']);

  say("b.test's server-receive on loopback, trusting the federation CA");
  const mailboxes = join(dir, 'b', 'mailboxes');
  mkdirSync(mailboxes, { recursive: true });
  // The operator makes bob's mailbox: give-recipient creates none unless told to.
  for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(mailboxes, 'bob', f), { recursive: true, mode: 0o700 });
  const serverConfig = join(dir, 'b', 'server-receive.toml');
  writeFileSync(
    serverConfig,
    `domain = "b.test"\nhandler = ["handle-incoming-mail", "--config", ${JSON.stringify(handlerConfig(mailboxes))}]\ncheck = ["handle-incoming-mail", "--check", "--config", ${JSON.stringify(join(dir, 'b', 'handle-incoming-mail.toml'))}]\n[tls]\ncertificate = "../b.test.crt"\nkey = "../b.test.key"\nca = ["../ca/ca.crt"]\n`,
  );
  const server = await startServer(serverConfig);
  try {
    say('alice composes a message with an attachment at a.test');
    writeFileSync(join(dir, 'notes.txt'), 'Agenda:\n1. IMA\n2. Tea\n');
    const message = join(dir, 'message.ima');
    await run('make-message', [
      '--from',
      'Alice <alice@a.test>',
      '--to',
      'bob@b.test',
      '--subject',
      'Meeting notes',
      '--text',
      'Hi Bob,\n\nthe notes are attached.\n\nAlice\n',
      '--attach',
      join(dir, 'notes.txt'),
      '--output',
      message,
    ]);
    console.log((await run('tar', ['tvf', message], undefined, false)).toString().trimEnd());

    say("a.test's send-mail delivers it over mutual TLS (server address from its [servers] table)");
    const sendConfig = join(dir, 'a', 'send-mail.toml');
    mkdirSync(join(dir, 'a'), { recursive: true });
    writeFileSync(
      sendConfig,
      `domain = "a.test"\ndns_srv = false\n[tls]\ncertificate = "../a.test.crt"\nkey = "../a.test.key"\nca = ["../ca/ca.crt"]\n[servers]\n"b.test" = "127.0.0.1:${server.port}"\n`,
    );
    process.stdout.write((await run('send-mail', ['--config', sendConfig, message])).toString());

    say("What landed in bob@b.test's mailbox");
    const bob = join(mailboxes, 'bob');
    tree(bob);
    const fresh = readdirSync(join(bob, 'new'));
    if (fresh.length !== 1) throw new Error(`expected one new message, found ${fresh.length}`);
    const stored = join(bob, 'new', fresh[0]);
    console.log(`\n$ cat ${show(join(stored, 'headers'))}\n${readFileSync(join(stored, 'headers'), 'utf8').trimEnd()}`);
    console.log(`\n$ cat ${show(join(stored, 'body'))}\n${readFileSync(join(stored, 'body'), 'utf8').trimEnd()}`);
    await fetchAsBob(mailboxes);
  } finally {
    say('Stopping b.test');
    server.proc.kill('SIGTERM');
    await once(server.proc, 'exit');
  }
  console.log(`\nDone in ${((performance.now() - t0) / 1000).toFixed(1)} s.`);
}

main()
  .then(() => rmSync(dir, { recursive: true, force: true }))
  .catch((e) => {
    console.error(`demo failed: ${(e as Error).message} (files kept in ${dir})`);
    process.exitCode = 1;
  });
