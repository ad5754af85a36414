// The submission role: AUTH only over TLS (STARTTLS and implicit TLS),
// scrypt passwords, sender rules on MAIL FROM and From:, the message handed
// to the submission command with the reply carrying the id it printed.
// Real clients: swaks and msmtp.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import tls from 'node:tls';
import { type Listening, runCommand } from '../helpers.js';
import { config, dir, hash, pki, startReceive, swaks } from './receive-fixture.js';

const out = join(dir, 'submitted');
mkdirSync(out, { recursive: true });
// Stands in for the queue: keeps the message, its arguments and its IMA_ variables, prints a queue id.
const queue = join(dir, 'fake-queue.sh');
writeFileSync(queue, `#!/bin/sh\nid=q$$\ncat > ${out}/$id.ima\necho "$@" > ${out}/$id.args\nenv | grep '^IMA_' | sort > ${out}/$id.env\necho $id\n`, {
  mode: 0o755,
});

const submitted = () => readdirSync(out).filter((f) => f.endsWith('.ima'));
const tarHeaders = (file: string) => {
  const b = readFileSync(join(out, file));
  const size = parseInt(b.subarray(124, 136).toString().trim(), 8);
  return b.subarray(512, 512 + size).toString();
};
const AUTH = ['--auth', 'PLAIN', '--auth-user', 'alice', '--auth-password', 'secret'];
/** alice's message to x (named in To:) and to hidden (in the envelope only), over STARTTLS (--tls) or implicit TLS (--tlsc). */
const toXAndHidden = (port: number, tls: '--tls' | '--tlsc', headers: string[] = []) =>
  swaks(port, [
    tls,
    ...AUTH,
    '--from',
    'alice@b.test',
    '--to',
    'x@elsewhere.test,hidden@elsewhere.test',
    ...headers.flatMap((h) => ['--header', h]),
    '--header',
    'To: x@elsewhere.test',
    '--body',
    'hello',
  ]);

describe('smtp-receive submission', () => {
  let sub: Listening;
  let file: string;
  before(async () => {
    file = config(
      'submission',
      `[limits]
max_login_failures = 3
[timeouts]
login_delay = "50ms"
[submission]
command = [${JSON.stringify(queue)}]
[submission.users.alice]
password = "${await hash('secret')}"
senders = ["alice@b.test", "@sales.b.test", "alice+*@b.test"]
`,
      'role = "submission"\nin_process = false',
    );
    sub = await startReceive(file);
  });
  after(() => sub.stop());

  it('takes a message from a logged-in user over STARTTLS; the reply carries the queue id; the envelope goes to the queue as --recipient', async () => {
    const n = submitted().length;
    const r = await toXAndHidden(sub.port, '--tls', ['From: Alice <alice+news@b.test>']);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /^<~ +235 2\.7\.0 /m);
    const m = /^<~ +250 2\.0\.0 accepted as (q\d+)\r?$/m.exec(r.out);
    assert.ok(m, r.out);
    assert.equal(submitted().length, n + 1);
    const h = tarHeaders(`${m[1]}.ima`);
    assert.match(h, /^from: Alice <alice\+news@b\.test>$/m);
    // The queue (queue-mail) takes the envelope as arguments; the headers stay as the client wrote them.
    assert.doesNotMatch(h, /^bcc:/m);
    assert.equal(readFileSync(join(out, `${m[1]}.args`), 'utf8').trim(), '--recipient x@elsewhere.test --recipient hidden@elsewhere.test');
    assert.match(h, /^received: from client\.a\.test \(127\.0\.0\.1\) by mx\.b\.test with ESMTPSA \(TLSv1\.3 \S+\) id \S+ user alice; /m);
    assert.doesNotMatch(h, /authentication-results/);
    await sub.waitLog(/user=alice from=<alice@b\.test> to=<x@elsewhere\.test,hidden@elsewhere\.test> size=\d+ id=urn:uuid:\S+ result=250/);
  });

  it('offers no AUTH before TLS and refuses MAIL without a login', async () => {
    const r = await swaks(sub.port, ['--from', 'alice@b.test', '--to', 'x@elsewhere.test', '--quit-after', 'MAIL']);
    assert.doesNotMatch(r.out, /250-AUTH/);
    assert.match(r.out, /^<\*\* +530 5\.7\.0 /m);
  });

  it("refuses a wrong password with 535 5.7.8; after too many failures 421, a login to one's own account between them resetting nothing", async () => {
    const r = await swaks(sub.port, [
      '--tls',
      '--auth',
      'PLAIN',
      '--auth-user',
      'alice',
      '--auth-password',
      'wrong',
      '--from',
      'alice@b.test',
      '--to',
      'x@elsewhere.test',
    ]);
    assert.match(r.out, /535 5\.7\.8 authentication failed/);
    await sub.waitLog(/login user=alice method=PLAIN result=failed/);
    const nobody = await swaks(sub.port, [
      '--tls',
      '--auth',
      'LOGIN',
      '--auth-user',
      'mallory',
      '--auth-password',
      'x',
      '--from',
      'alice@b.test',
      '--to',
      'x@e.test',
    ]);
    assert.match(nobody.out, /535 5\.7\.8/);
    // A login to one's own account in between resets nothing (the guesses at others still count).
    const own = await swaks(sub.port, ['--tls', ...AUTH, '--from', 'alice@b.test', '--to', 'x@e.test', '--quit-after', 'AUTH']);
    assert.match(own.out, /235 /);
    const third = await swaks(sub.port, [
      ...AUTH.slice(0, 2),
      '--tls',
      '--auth-user',
      'alice',
      '--auth-password',
      'nope',
      '--from',
      'a@b.test',
      '--to',
      'x@e.test',
    ]);
    assert.match(third.out, /535 5\.7\.8/);
    const locked = await swaks(sub.port, ['--tls', ...AUTH, '--from', 'alice@b.test', '--to', 'x@e.test', '--quit-after', 'AUTH']);
    assert.match(locked.out, /421 4\.7\.0 too many failed logins/);
  });
});

describe('smtp-receive submission sender rules', () => {
  let sub: Listening;
  before(async () => {
    const file = config(
      'submission-rules',
      `[submission]
command = [${JSON.stringify(queue)}]
envelope_flag = "--recipient"
[submission.users.alice]
password = "${await hash('secret')}"
senders = ["alice@b.test", "@sales.b.test"]
`,
      'role = "submission"\nin_process = false',
    );
    sub = await startReceive(file, ['--implicit-tls']);
  });
  after(() => sub.stop());

  it("gives the command the session's id, the client's address and the user, the same for each message of a session", async () => {
    const s = tls.connect({ host: '127.0.0.1', port: sub.port, servername: 'mx.b.test', ca: readFileSync(pki.caFile) });
    s.on('error', () => {});
    let got = '';
    s.on('data', (d: Buffer) => (got += d));
    /** Send `line` (if any), then wait for a reply matching re; what was said since the last step. */
    const step = (line: string | undefined, re: RegExp) =>
      new Promise<string>((res, rej) => {
        got = '';
        if (line !== undefined) s.write(line);
        const t = setTimeout(() => rej(new Error(`no ${re} in ${JSON.stringify(got)}`)), 20_000);
        const check = () => {
          if (!re.test(got)) return;
          clearTimeout(t);
          s.off('data', check);
          res(got);
        };
        s.on('data', check);
        check();
      });
    await step(undefined, /^220 /m);
    await step('EHLO client.a.test\r\n', /^250 /m);
    await step(`AUTH PLAIN ${Buffer.from('\0alice\0secret').toString('base64')}\r\n`, /^235 /m);
    const ids: string[] = [];
    for (const n of [1, 2]) {
      await step('MAIL FROM:<alice@b.test>\r\n', /^250 /m);
      await step('RCPT TO:<x@elsewhere.test>\r\n', /^250 /m);
      await step('DATA\r\n', /^354 /m);
      const said = await step(`From: alice@b.test\r\nTo: x@elsewhere.test\r\nSubject: ${n}\r\n\r\nhello ${n}\r\n.\r\n`, /^250 .*accepted as (q\d+)/m);
      ids.push(/accepted as (q\d+)/.exec(said)![1]);
    }
    s.end();
    const envs = ids.map((id) => readFileSync(join(out, `${id}.env`), 'utf8'));
    const session = /^IMA_SESSION_ID=(\S+)$/m.exec(envs[0])?.[1];
    assert.ok(session, envs[0]);
    for (const [i, env] of envs.entries()) {
      assert.match(env, /^IMA_SMTP_USER=alice$/m);
      assert.match(env, /^IMA_PEER_ADDRESS=127\.0\.0\.1$/m);
      assert.equal(/^IMA_SESSION_ID=(\S+)$/m.exec(env)?.[1], session, 'one session, one id');
      // The id the received line gives this message: the session's, then the message's number in it.
      assert.match(tarHeaders(`${ids[i]}.ima`), new RegExp(`^received: .* id ${session}\\.${i + 1} user alice; `, 'm'));
    }
  });

  it('refuses a MAIL FROM outside the user rules with 550 5.7.1 naming the rule', async () => {
    const r = await swaks(sub.port, ['--tlsc', ...AUTH, '--from', 'bob@b.test', '--to', 'x@elsewhere.test', '--quit-after', 'MAIL']);
    assert.match(r.out, /550 5\.7\.1 user alice may not send as <bob@b\.test> \(rule submission\.users\.alice\.senders = alice@b\.test, @sales\.b\.test\)/);
  });

  it('refuses a From: header outside the rules with 550 5.7.1, and hands nothing on', async () => {
    const n = submitted().length;
    const r = await swaks(sub.port, ['--tlsc', ...AUTH, '--from', 'team@sales.b.test', '--to', 'x@elsewhere.test', '--header', 'From: bob@b.test']);
    assert.match(r.out, /550 5\.7\.1 user alice may not send as From: bob@b\.test \(rule submission\.users\.alice\.senders/);
    assert.equal(submitted().length, n);
  });

  it('checks every From: address against the rules: a second one in the list, a second From: field or a group is refused, nothing handed on', async () => {
    const n = submitted().length;
    const send = (headers: string[]) =>
      swaks(sub.port, ['--tlsc', ...AUTH, '--from', 'alice@b.test', '--to', 'x@elsewhere.test', ...headers.flatMap((h) => ['--header', h]), '--body', 'hi']);
    let r = await send(['From: alice@b.test, boss@evil.test']);
    assert.match(r.out, /550 5\.7\.1 user alice may not send as From: boss@evil\.test/);
    // swaks's --header replaces a field of that name: a second From: goes in as a field of its own through --add-header.
    r = await swaks(sub.port, [
      '--tlsc',
      ...AUTH,
      '--from',
      'alice@b.test',
      '--to',
      'x@elsewhere.test',
      '--header',
      'From: alice@b.test',
      '--add-header',
      'From: boss@evil.test',
      '--body',
      'hi',
    ]);
    assert.match(r.out, /550 5\.7\.1 more than one From: header/);
    r = await send(['From: team: alice@b.test;']);
    assert.match(r.out, /550 5\.7\.1 From: team: alice@b\.test;: only plain addresses can be checked/);
    assert.equal(submitted().length, n);
    r = await send(['From: Alice <alice@b.test>, Sales <team@sales.b.test>']);
    assert.match(r.out, /250 2\.0\.0 accepted as q\d+/, 'every author within the rules');
  });

  it('logs a login name with spaces quoted, so it cannot pass for fields of the log line', async () => {
    const forged = 'mallory method=PLAIN result=ok';
    const r = await swaks(sub.port, ['--tlsc', '--auth', 'PLAIN', '--auth-user', forged, '--auth-password', 'x', '--quit-after', 'AUTH']);
    assert.match(r.out, /535 5\.7\.8/);
    await sub.waitLog(/login user="mallory method=PLAIN result=ok" method=PLAIN result=failed/);
  });

  it('takes mail from msmtp (implicit TLS, certificate checked) and passes the envelope as --recipient', async () => {
    const cfg = join(dir, 'msmtprc');
    writeFileSync(
      cfg,
      `account default
host 127.0.0.1
port ${sub.port}
tls on
tls_starttls off
tls_trust_file ${pki.caFile}
tls_host_override mx.b.test
auth plain
user alice
password secret
from alice@b.test
`,
      { mode: 0o600 },
    );
    const n = submitted().length;
    const r = await runCommand('msmtp', ['-C', cfg, '-d', 'x@elsewhere.test', 'y@elsewhere.test'], {
      input: 'From: alice@b.test\r\nTo: x@elsewhere.test\r\nSubject: from msmtp\r\n\r\nHi.\r\n',
    });
    assert.equal(r.code, 0, r.stdout.toString() + r.stderr);
    assert.equal(submitted().length, n + 1);
    const id = /250 2\.0\.0 accepted as (q\d+)/.exec(r.stdout.toString() + r.stderr)![1];
    assert.equal(readFileSync(join(out, `${id}.args`), 'utf8').trim(), '--recipient x@elsewhere.test --recipient y@elsewhere.test');
    assert.match(tarHeaders(`${id}.ima`), /^subject: from msmtp$/m);
  });
});

/** A submission config in which alice (password "secret") may send as alice@b.test only; `limits` and `timeouts` are a line of each table. */
async function aliceOnly(name: string, limits: string, timeouts: string): Promise<string> {
  const users = `[submission.users.alice]\npassword = "${await hash('secret')}"\nsenders = ["alice@b.test"]\n`;
  return config(
    name,
    `[limits]\n${limits}\n[timeouts]\n${timeouts}\n[submission]\ncommand = [${JSON.stringify(queue)}]\n${users}`,
    'role = "submission"\nin_process = false',
  );
}

describe('smtp-receive submission, failed logins slowed', () => {
  let sub: Listening;
  before(async () => {
    const file = await aliceOnly('submission-slow', 'max_login_failures = 5', 'login_delay = "400ms"');
    sub = await startReceive(file);
  });
  after(() => sub.stop());

  it('answers each failed login later by login_delay for every failure before it', async () => {
    const wrong = async () => {
      const t0 = performance.now();
      const r = await swaks(sub.port, ['--tls', '--auth', 'PLAIN', '--auth-user', 'alice', '--auth-password', 'wrong', '--quit-after', 'AUTH']);
      assert.match(r.out, /535 5\.7\.8/);
      return performance.now() - t0;
    };
    await wrong(); // none before it: answered at once
    // Lower bounds only: a busy machine makes a run slower, never faster.
    assert.ok((await wrong()) >= 400, 'the second failure waits 400 ms');
    assert.ok((await wrong()) >= 800, 'the third waits 800 ms');
  });
});

describe('smtp-receive submission to a command that reads the recipients from the headers (envelope_flag = "")', () => {
  let sub: Listening;
  before(async () => {
    const file = config(
      'submission-headers',
      `[submission]\ncommand = [${JSON.stringify(queue)}]\nenvelope_flag = ""\n[submission.users.alice]\npassword = "${await hash('secret')}"\nsenders = ["alice@b.test"]\n`,
      'role = "submission"\nin_process = false',
    );
    sub = await startReceive(file, ['--implicit-tls']);
  });
  after(() => sub.stop());

  it('adds envelope recipients the headers do not name as bcc, and passes no recipient arguments', async () => {
    const n = submitted().length;
    const r = await toXAndHidden(sub.port, '--tlsc');
    const id = /250 2\.0\.0 accepted as (q\d+)/.exec(r.out)?.[1];
    assert.ok(id, r.out);
    assert.equal(submitted().length, n + 1);
    assert.equal(readFileSync(join(out, `${id}.args`), 'utf8').trim(), '');
    const headers = tarHeaders(`${id}.ima`);
    assert.match(headers, /^to: x@elsewhere\.test$/m);
    assert.match(headers, /^bcc: hidden@elsewhere\.test$/m);
  });

  it('refuses with 550 5.7.1 a message whose headers name a recipient the envelope does not, and hands nothing on', async () => {
    const n = submitted().length;
    const r = await swaks(sub.port, ['--tlsc', ...AUTH, '--from', 'alice@b.test', '--to', 'x@elsewhere.test', '--header', 'Cc: extra@elsewhere.test']);
    assert.match(r.out, /^<~\* +550 5\.7\.1 the headers name recipients the envelope \(RCPT TO\) does not: extra@elsewhere\.test/m);
    assert.equal(submitted().length, n);
  });
});

describe('smtp-receive submission, failed logins across a reload', () => {
  let sub: Listening;
  before(async () => {
    const file = await aliceOnly('submission-hup', 'max_login_failures = 2', 'login_delay = 0');
    sub = await startReceive(file);
  });
  after(() => sub.stop());

  it('keeps the failure counts across SIGHUP: a guess before and one after lock the address out', async () => {
    const login = (password: string) =>
      swaks(sub.port, ['--tls', '--auth', 'PLAIN', '--auth-user', 'alice', '--auth-password', password, '--quit-after', 'AUTH']);
    assert.match((await login('wrong')).out, /535 5\.7\.8/);
    const reloaded = new Promise<void>((res) => sub.proc.stderr!.on('data', () => /reloaded configuration/.test(sub.log()) && res()));
    sub.proc.kill('SIGHUP');
    await reloaded;
    assert.match((await login('wrong again')).out, /535 5\.7\.8/);
    assert.match((await login('secret')).out, /421 4\.7\.0 too many failed logins/);
  });
});

describe('smtp-receive submission, parallel guesses', () => {
  let sub: Listening;
  before(async () => {
    const file = await aliceOnly('submission-race', 'max_login_failures = 3', 'login_delay = 0');
    sub = await startReceive(file, ['--implicit-tls']);
  });
  after(() => sub.stop());

  /** An implicit-TLS session that has said EHLO, ready to send AUTH; what the server says after that. */
  async function ready(): Promise<{ auth: (password: string) => Promise<string> }> {
    const s = tls.connect({ host: '127.0.0.1', port: sub.port, servername: 'mx.b.test', ca: readFileSync(pki.caFile) });
    s.on('error', () => {});
    await once(s, 'secureConnect');
    let got = '';
    const reply = (re: RegExp) =>
      new Promise<void>((res) =>
        s.on('data', function check(d: Buffer) {
          got += d;
          if (re.test(got)) res(void s.off('data', check));
        }),
      );
    await reply(/^220 /m);
    s.write('EHLO client.a.test\r\n');
    await reply(/^250 /m);
    return {
      auth: async (password) => {
        got = '';
        s.write(`AUTH PLAIN ${Buffer.from(`\0alice\0${password}`).toString('base64')}\r\n`);
        await reply(/^[2-5]\d\d /m);
        s.destroy();
        return got;
      },
    };
  }

  it('tries only max_login_failures passwords of 8 sent at once; the others are refused with 421 unheard', async () => {
    const sessions = await Promise.all(Array.from({ length: 8 }, () => ready()));
    const answers = await Promise.all(sessions.map((s, i) => s.auth(`wrong${i}`)));
    assert.equal(answers.filter((a) => /^535 5\.7\.8 /m.test(a)).length, 3, answers.join(''));
    assert.equal(answers.filter((a) => /^421 4\.7\.0 too many failed logins/m.test(a)).length, 5, answers.join(''));
  });
});
