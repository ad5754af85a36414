// --check-config must refuse every config a real start refuses (issue 14.10),
// and some things are refused at config time that used to pass (14.11): each
// case is run both ways, as an operator would, with the real programs.
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { Pki } from '../pki.js';
import { type Result, runBin, tempDir, testEnv } from '../helpers.js';

const dir = tempDir('ima-check-');
let pki: Pki;
let other: Pki;
const f = (name: string) => join(dir, name);

before(() => {
  pki = new Pki(dir);
  mkdirSync(join(dir, 'other'));
  other = new Pki(join(dir, 'other'), 'other');
  pki.server('b.test');
  pki.server('a.test');
  pki.server('a.test', { file: 'a-server-only', serverAuthOnly: true });
  pki.user('bob');
  other.server('b.test', { file: 'elsewhere' });
  writeFileSync(f('garbage.crt'), 'not a certificate\n');
});

function conf(name: string, text: string): string {
  const file = f(name);
  writeFileSync(file, text);
  return file;
}

const tlsOf = (cert: string, key: string, ca = 'test-ca.crt') => `[tls]\ncertificate = "${cert}"\nkey = "${key}"\nca = ["${ca}"]\n`;

interface Case {
  title: string;
  program: string;
  config: () => string;
  /** What the error line must name. */
  names: RegExp;
  /** How a real start is run (args after --config FILE); absent: --check-config only. */
  start?: string[];
  input?: string;
}

const serverStart = ['--listen', '127.0.0.1:0'];
const cases: Case[] = [
  {
    title: 'server-receive: a certificate file that does not exist',
    program: 'server-receive',
    config: () => conf('sr1.toml', `domain = "b.test"\n${tlsOf('missing.crt', 'b.test.key')}`),
    names: /missing\.crt/,
    start: serverStart,
  },
  {
    title: "server-receive: a key that is not the certificate's",
    program: 'server-receive',
    config: () => conf('sr2.toml', `domain = "b.test"\n${tlsOf('b.test.crt', 'a.test.key')}`),
    names: /key/,
    start: serverStart,
  },
  {
    title: 'server-receive: a CA file that is not a certificate',
    program: 'server-receive',
    config: () => conf('sr3.toml', `domain = "b.test"\n${tlsOf('b.test.crt', 'b.test.key', 'garbage.crt')}`),
    names: /garbage\.crt/,
    start: serverStart,
  },
  {
    title: 'server-receive: a certificate that does not name the domain',
    program: 'server-receive',
    config: () => conf('sr4.toml', `domain = "b.test"\n${tlsOf('a.test.crt', 'a.test.key')}`),
    names: /b\.test/,
    start: serverStart,
  },
  {
    title: 'server-receive: a handler command that does not exist',
    program: 'server-receive',
    config: () => conf('sr5.toml', `domain = "b.test"\nhandler = ["no-such-handler-xyz"]\n${tlsOf('b.test.crt', 'b.test.key')}`),
    names: /handler.*no-such-handler-xyz/,
    start: serverStart,
  },
  {
    title: 'handle-incoming-mail: an alias loop',
    program: 'handle-incoming-mail',
    config: () =>
      conf('him1.toml', `[domains."b.test"]\ncommand = ["give-recipient", "{address}"]\n[aliases]\n"x@b.test" = ["y@b.test"]\n"y@b.test" = ["x@b.test"]\n`),
    names: /loop/,
    start: ['--recipient', 'bob@b.test'],
    input: '',
  },
  {
    title: 'handle-incoming-mail: a catch_all outside the local domains',
    program: 'handle-incoming-mail',
    config: () => conf('him2.toml', `[domains."b.test"]\ncommand = ["give-recipient", "{address}"]\ncatch_all = "x@c.test"\n`),
    names: /catch_all/,
    start: ['--recipient', 'bob@b.test'],
    input: '',
  },
  {
    title: 'handle-incoming-mail: a route key that is not an address',
    program: 'handle-incoming-mail',
    config: () => conf('him3.toml', `[domains."b.test"]\ncommand = ["give-recipient", "{address}"]\n[routes]\n"not an address" = ["give-recipient"]\n`),
    names: /routes/,
    start: ['--recipient', 'bob@b.test'],
    input: '',
  },
  {
    title: 'handle-incoming-mail: a malformed domain',
    program: 'handle-incoming-mail',
    config: () => conf('him4.toml', `[domains."b..test"]\ncommand = ["give-recipient", "{address}"]\n`),
    names: /b\.\.test/,
    start: ['--recipient', 'bob@b.test'],
    input: '',
  },
  {
    title: 'handle-incoming-mail: a route command that does not exist',
    program: 'handle-incoming-mail',
    config: () => conf('him5.toml', `[domains."b.test"]\ncommand = ["no-such-command-xyz", "{address}"]\n`),
    names: /no-such-command-xyz/,
    start: ['--recipient', 'bob@b.test'],
    input: '',
  },
  {
    title: 'give-recipient: a mailbox template with ..',
    program: 'give-recipient',
    config: () => conf('gr1.toml', `mailbox = "/var/mail/{domain}/../{local}"\n`),
    names: /mailbox/,
    start: ['bob@b.test'],
    input: '',
  },
  {
    title: 'give-recipient: a relative mailbox template',
    program: 'give-recipient',
    config: () => conf('gr2.toml', `mailbox = "mail/{local}"\n`),
    names: /mailbox/,
    start: ['bob@b.test'],
    input: '',
  },
  {
    title: 'post-office: a user with neither password nor certificate',
    program: 'post-office',
    config: () => conf('po1.toml', `name = "b.test"\n${tlsOf('b.test.crt', 'b.test.key')}[users.bob]\nmailbox = "${f('mb-bob')}"\n`),
    names: /users\.bob/,
    start: serverStart,
  },
  {
    title: 'post-office: a mailbox path with ..',
    program: 'post-office',
    config: () =>
      conf('po2.toml', `name = "b.test"\n${tlsOf('b.test.crt', 'b.test.key')}[users.bob]\nmailbox = "${f('mail')}/../bob"\ncertificate_name = "bob"\n`),
    names: /users\.bob.*mailbox/,
    start: serverStart,
  },
  {
    title: 'post-office: two users sharing one mailbox',
    program: 'post-office',
    config: () =>
      conf(
        'po3.toml',
        `name = "b.test"\n${tlsOf('b.test.crt', 'b.test.key')}[users.bob]\nmailbox = "${f('mb')}"\ncertificate_name = "bob"\n[users.eve]\nmailbox = "${f('mb/')}"\ncertificate_name = "eve"\n`,
      ),
    names: /mailbox.*bob|bob.*mailbox/,
    start: serverStart,
  },
  {
    title: 'post-office: a certificate from another CA than its key',
    program: 'post-office',
    config: () =>
      conf('po4.toml', `name = "b.test"\n${tlsOf('other/elsewhere.crt', 'b.test.key')}[users.bob]\nmailbox = "${f('mb-bob')}"\ncertificate_name = "bob"\n`),
    names: /key/,
    start: serverStart,
  },
  {
    title: 'send-mail: a certificate for another domain than its own',
    program: 'send-mail',
    config: () => conf('sm1.toml', `domain = "a.test"\n${tlsOf('b.test.crt', 'b.test.key')}`),
    names: /a\.test/,
    start: [],
    input: '',
  },
  {
    title: 'send-mail: a legacy command that does not exist',
    program: 'send-mail',
    config: () =>
      conf('sm2.toml', `domain = "a.test"\nlegacy_domains = ["legacy.test"]\nlegacy_command = ["no-such-legacy-xyz"]\n${tlsOf('a.test.crt', 'a.test.key')}`),
    names: /legacy_command/,
  },
  {
    title: 'send-mail: a certificate without clientAuth, as public CAs issue them (every server would refuse it at each try)',
    program: 'send-mail',
    config: () => conf('sm6.toml', `domain = "a.test"\n${tlsOf('a-server-only.crt', 'a-server-only.key')}`),
    names: /tls\.certificate: a-server-only\.crt: not for client authentication/,
    start: [],
    input: '',
  },
  {
    title: 'send-mail: a [servers] value that is no HOST:PORT (it was an internal error at the first send, with no result lines)',
    program: 'send-mail',
    config: () => conf('sm3.toml', `domain = "a.test"\n[servers]\n"b.test" = "mail b.test"\n${tlsOf('a.test.crt', 'a.test.key')}`),
    names: /servers\."b\.test": expected HOST or HOST:PORT, not "mail b\.test"/,
    start: [],
    input: '',
  },
  {
    title: 'send-mail: a [servers] port past 65535',
    program: 'send-mail',
    config: () => conf('sm4.toml', `domain = "a.test"\n[servers]\n"b.test" = "127.0.0.1:99999"\n${tlsOf('a.test.crt', 'a.test.key')}`),
    names: /servers\."b\.test": port 99999 is not 1-65535/,
  },
  {
    title: 'send-mail: two [servers] keys naming one domain',
    program: 'send-mail',
    config: () =>
      conf('sm5.toml', `domain = "a.test"\n[servers]\n"b.test" = "127.0.0.1:4690"\n"B.TEST" = "127.0.0.1:4691"\n${tlsOf('a.test.crt', 'a.test.key')}`),
    names: /servers\."B\.TEST": names the same domain as servers\."b\.test" \(b\.test\)/,
  },
  {
    title: 'fetch-mail: a password_file that does not exist',
    program: 'fetch-mail',
    config: () =>
      conf('fm1.toml', `server = "127.0.0.1"\nport = 1\nuser = "bob"\nca = ["test-ca.crt"]\npassword_file = "no-such-password"\nmailbox = "${f('fetched')}"\n`),
    names: /password_file/,
    start: [f('fetched')],
  },
  {
    title: 'fetch-mail: a password_file whose first line holds a control character',
    program: 'fetch-mail',
    config: () => {
      writeFileSync(f('pw-tab'), 'sesa\tme\r\n');
      return conf('fm3.toml', `server = "127.0.0.1"\nport = 1\nuser = "bob"\nca = ["test-ca.crt"]\npassword_file = "pw-tab"\nmailbox = "${f('fetched')}"\n`);
    },
    names: /password_file: .*pw-tab: the first line holds a control character/,
    start: [f('fetched')],
  },
  {
    // It logged in as bob with the password "smith" and the real one, and counted a failure against bob.
    title: 'fetch-mail: a user that the protocol cannot carry (a space)',
    program: 'fetch-mail',
    config: () =>
      conf('fm4.toml', `server = "127.0.0.1"\nport = 1\nuser = "bob smith"\nca = ["test-ca.crt"]\npassword_file = "pw"\nmailbox = "${f('fetched')}"\n`),
    names: /user: user names are 1 to 64 of/,
    start: [f('fetched')],
  },
  {
    title: 'fetch-mail: a CA file that does not exist',
    program: 'fetch-mail',
    config: () =>
      conf('fm2.toml', `server = "127.0.0.1"\nport = 1\nuser = "bob"\nca = ["no-such-ca.crt"]\npassword_file = "pw"\nmailbox = "${f('fetched')}"\n`),
    names: /no-such-ca\.crt/,
    start: [f('fetched')],
  },
  {
    // It was read and never parsed: a run then failed (exit 75) blaming the server's certificate.
    title: 'fetch-mail: a CA file that holds no certificate',
    program: 'fetch-mail',
    config: () => conf('fm5.toml', `server = "127.0.0.1"\nport = 1\nuser = "bob"\nca = ["garbage.crt"]\npassword_file = "pw"\nmailbox = "${f('fetched')}"\n`),
    names: /\bca: .*garbage\.crt: not a PEM certificate/,
    start: [f('fetched')],
  },
  {
    title: 'fetch-mail with a client certificate: a CA file that holds no certificate, named by its own key',
    program: 'fetch-mail',
    config: () =>
      conf(
        'fm6.toml',
        `server = "127.0.0.1"\nport = 1\nuser = "bob"\nca = ["garbage.crt"]\ncertificate = "bob.crt"\nkey = "bob.key"\nmailbox = "${f('fetched')}"\n`,
      ),
    names: /: ca: .*garbage\.crt: not a PEM certificate/,
    start: [f('fetched')],
  },
  {
    title: 'make-message: a [headers] value that is not a valid header',
    program: 'make-message',
    config: () => conf('mm1.toml', `from = "alice@a.test"\n[headers]\n"x-bad" = "line\\nbreak"\n`),
    names: /headers.*x-bad/,
    start: ['--text', 'hi', 'bob@b.test'],
  },
  {
    title: 'smtp-receive: a notice_from that is not an address',
    program: 'smtp-receive',
    config: () => conf('smtp1.toml', `hostname = "b.test"\nnotice_from = "postmaster at b.test"\n${tlsOf('b.test.crt', 'b.test.key')}[mx]\nverdicts = false\n`),
    names: /notice_from/,
    start: serverStart,
  },
  {
    title: 'smtp-receive: a notice_command that is not there',
    program: 'smtp-receive',
    config: () =>
      conf('smtp2.toml', `hostname = "b.test"\nnotice_command = ["no-such-queue-mail"]\n${tlsOf('b.test.crt', 'b.test.key')}[mx]\nverdicts = false\n`),
    names: /notice_command.*no-such-queue-mail/,
    start: serverStart,
  },
  // A port past 65535 passed the check, then a start blamed --listen (exit 64), which was never given.
  ...(['post-office', 'server-receive', 'smtp-receive'] as const).map((program): Case => ({
    title: `${program}: a listen port past 65535`,
    program,
    config: () =>
      conf(
        `${program}-port.toml`,
        {
          'post-office': `name = "b.test"\nlisten = "127.0.0.1:99999"\n${tlsOf('b.test.crt', 'b.test.key')}[users.bob]\nmailbox = "${f('mb-bob')}"\ncertificate_name = "bob"\n`,
          'server-receive': `domain = "b.test"\nlisten = "127.0.0.1:99999"\n${tlsOf('b.test.crt', 'b.test.key')}`,
          'smtp-receive': `hostname = "b.test"\nlisten = "127.0.0.1:99999"\n${tlsOf('b.test.crt', 'b.test.key')}[mx]\nverdicts = false\n`,
        }[program],
      ),
    names: /listen: must be ADDRESS:PORT with a port from 1 to 65535/,
    start: [],
  })),
  {
    title: 'run-queue: a notice_from that is not an address',
    program: 'run-queue',
    config: () => conf('rq1.toml', `queue_dir = "${f('queue')}"\nnotice_from = "mailer-daemon"\n`),
    names: /notice_from/,
  },
  {
    // Longer than a timer waits: Node.js fired it at once, and every stage was killed as it started.
    title: 'run-queue: a stage_timeout longer than a timer can wait',
    program: 'run-queue',
    config: () => conf('rq2.toml', `queue_dir = "${f('queue')}"\nstage_timeout = "600h"\n`),
    names: /stage_timeout: must be at most 2147483647ms/,
    start: ['--once'],
  },
  {
    title: 'run-queue: a poll_interval longer than a timer can wait',
    program: 'run-queue',
    config: () => conf('rq3.toml', `queue_dir = "${f('queue')}"\npoll_interval = "600h"\n`),
    names: /poll_interval: must be at most 2147483647ms/,
    start: ['--once'],
  },
];

function expectRefused(r: Result, c: Case, file: string, how: string): void {
  assert.equal(r.code, 78, `${how}: exit ${r.code}, stderr: ${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `${how}: one line, got: ${r.stderr}`);
  assert.match(lines[0], new RegExp(file.replace(/.*\//, '').replace('.', '\\.')), `${how}: names the config file`);
  assert.match(lines[0], c.names, `${how}: names what is wrong`);
  assert.doesNotMatch(r.stderr, /configuration OK/);
}

describe('--check-config runs every check a start runs', () => {
  for (const c of cases) {
    test(c.title, async () => {
      mkdirSync(f('fetched'), { recursive: true });
      writeFileSync(f('pw'), 'secret\n');
      const file = c.config();
      const env = testEnv({ IMA_ALLOW_ROOT: '1' });
      const checked = await runBin(c.program, ['--config', file, '--check-config'], { env, cwd: dir });
      expectRefused(checked, c, file, '--check-config');
      if (c.start) {
        const started = await runBin(c.program, ['--config', file, ...c.start], { env, cwd: dir, input: c.input ?? '' });
        expectRefused(started, c, file, 'a real start');
      }
    });
  }
});

test('--check-config still says OK for a good config, and prints it', async () => {
  const file = conf('good.toml', `domain = "b.test"\n${tlsOf('b.test.crt', 'b.test.key')}`);
  const r = await runBin('server-receive', ['--config', file, '--check-config'], { cwd: dir });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /configuration OK/);
  assert.match(r.stdout.toString(), /domain = "b\.test"/);
});

test('post-office: two users may share a mailbox when both say so', async () => {
  const shared = `mailbox = "${f('team')}"\nshared_mailbox = true\ncertificate_name = `;
  const file = conf('po-shared.toml', `name = "b.test"\n${tlsOf('b.test.crt', 'b.test.key')}[users.bob]\n${shared}"bob"\n[users.eve]\n${shared}"eve"\n`);
  const r = await runBin('post-office', ['--config', file, '--check-config'], { cwd: dir });
  assert.equal(r.code, 0, r.stderr);
});
