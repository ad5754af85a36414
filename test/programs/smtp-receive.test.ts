import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { Readable } from 'node:stream';
import { readMessage } from '../../src/message/index.js';
import { after, before, describe, it } from 'node:test';
import type { Listening } from '../helpers.js';
import { MX_EXTRA, config, dir, headersOf, raw, replies, smtpClient, startReceive, stored, swaks } from '../smtp/receive-fixture.js';

describe('smtp-receive mx', () => {
  let mx: Listening;
  before(async () => {
    mx = await startReceive(config('mx', MX_EXTRA));
  });
  after(() => mx.stop());

  it('delivers to the envelope recipient (not the To: header) with received and authentication-results', async () => {
    const before = stored('carol').length;
    const r = await swaks(mx.port, [
      '--from',
      'alice@a.test',
      '--to',
      'bob@b.test',
      '--header',
      'To: carol@b.test',
      '--header',
      'Subject: envelope',
      '--body',
      'Hello Bob.',
    ]);
    assert.equal(r.code, 0, r.out);
    assert.match(replies(r.out).at(-2)!, /^250 2\.0\.0 accepted as urn:uuid:/);
    const id = /accepted as urn:uuid:(\S+)/.exec(r.out)![1];
    const h = headersOf('bob', id);
    assert.match(h, /^to: carol@b\.test$/m); // the headers as written
    assert.match(h, /^received: from client\.a\.test \(127\.0\.0\.1\) by mx\.b\.test with ESMTP id \S+\.1; /m);
    assert.match(h, /^authentication-results: mx\.b\.test; dkim=none .*spf=temperror .*dmarc=temperror/m);
    assert.equal(stored('carol').length, before, 'carol is only in the header');
    await mx.waitLog(/session=\S+ msg=1 client=127\.0\.0\.1 user=- from=<alice@a\.test> to=<bob@b\.test> size=\d+ id=urn:uuid:\S+ .*result=250 2\.0\.0/);
    assert.doesNotMatch(mx.log(), /Hello Bob/);
  });

  it("logs the verdicts the checks gave, whatever the client's own words say (a MAIL FROM of dmarc=pass@...)", async () => {
    const r = await swaks(mx.port, ['--from', 'dmarc=pass@a.test', '--to', 'bob@b.test', '--header', 'From: ceo@bank.test', '--body', 'pay']);
    assert.equal(r.code, 0, r.out);
    await mx.waitLog(/from=<dmarc=pass@a\.test> .* result=250/);
    const line = mx
      .log()
      .split('\n')
      .find((l) => l.includes('from=<dmarc=pass@a.test>'))!;
    assert.match(line, / spf=temperror dkim=none dmarc=temperror result=250 /);
  });

  it('refuses MAIL and RCPT parameters of extensions it does not offer with 555 5.5.4, and takes those it does', async () => {
    const r = await raw(mx.port, [
      { until: /^220 /m },
      { send: 'EHLO client.a.test\r\n', until: /^250 /m },
      { send: 'MAIL FROM:<alice@a.test> FOO=bar\r\n', until: /FOO: parameter not supported\r\n/ },
      { send: 'MAIL FROM:<alice@a.test> SIZE=100 BODY=8BITMIME SMTPUTF8\r\n', until: /^250 2\.1\.0 /m },
      { send: 'RCPT TO:<bob@b.test> NOTIFY=NEVER\r\n', until: /NOTIFY: parameter not supported\r\n/ },
      { send: 'RCPT TO:<bob@b.test>\r\n', until: /^250 2\.1\.5 /m },
      { send: 'QUIT\r\n', until: /^221 /m },
    ]);
    assert.match(r, /^555 5\.5\.4 FOO: parameter not supported\r$/m);
    assert.match(r, /^555 5\.5\.4 NOTIFY: parameter not supported\r$/m);
  });

  it('takes RCPT TO:<Postmaster> without a domain (RFC 5321 4.5.1) for the postmaster address of its config', async () => {
    const srv = await startReceive(config('mx-postmaster', `[mx]\ndns_servers = ["127.0.0.1:9"]\npostmaster = "bob@b.test"\n`));
    try {
      const before = new Set(stored('bob'));
      const r = await raw(srv.port, [
        { until: /^220 /m },
        { send: 'EHLO client.a.test\r\n', until: /^250 /m },
        { send: 'MAIL FROM:<alice@a.test>\r\n', until: /^250 2\.1\.0 /m },
        { send: 'RCPT TO:<Postmaster>\r\n', until: /^(250 2\.1\.5|55\d) .*\r\n/m },
        { send: 'DATA\r\n', until: /^(354|5\d\d) /m },
        { send: 'From: alice@a.test\r\nSubject: to the postmaster\r\n\r\nHi.\r\n.\r\n', until: /accepted as .*\r\n|^5\d\d /m },
      ]);
      assert.match(r, /^250 2\.1\.5 /m);
      const id = /accepted as urn:uuid:(\S+)/.exec(r)![1];
      assert.ok(!before.has(id));
      assert.match(headersOf('bob', id), /^subject: to the postmaster$/m);
    } finally {
      await srv.stop();
    }
  });

  it('records a HELO (not EHLO) client as SMTP, its name kept to what a domain or address literal holds', async () => {
    const before = new Set(stored('bob'));
    const r = await raw(mx.port, [
      { until: /^220 /m },
      { send: 'HELO x;evil)by(fake.test\r\n', until: /^250 /m },
      { send: 'MAIL FROM:<alice@a.test>\r\n', until: /^250 2\.1\.0 /m },
      { send: 'RCPT TO:<bob@b.test>\r\n', until: /^250 2\.1\.5 /m },
      { send: 'DATA\r\n', until: /^354 /m },
      { send: 'From: alice@a.test\r\nSubject: helo\r\n\r\nHi.\r\n.\r\n', until: /accepted as .*\r\n/ },
    ]);
    const id = /accepted as urn:uuid:(\S+)/.exec(r)![1];
    assert.ok(!before.has(id));
    assert.match(headersOf('bob', id), /^received: from x\?evil\?by\?fake\.test \(127\.0\.0\.1\) by mx\.b\.test with SMTP id \S+; /m);
  });

  it('offers STARTTLS with its own certificate and records the TLS version and cipher', async () => {
    const r = await swaks(mx.port, ['--tls', '--from', 'alice@a.test', '--to', 'bob@b.test', '--body', 'over TLS']);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /250-STARTTLS/);
    assert.match(r.out, /TLS started with cipher TLSv1\.3/);
    const id = /accepted as urn:uuid:(\S+)/.exec(r.out)![1];
    assert.match(headersOf('bob', id), /^received: from client\.a\.test \(127\.0\.0\.1\) by mx\.b\.test with ESMTPS \(TLSv1\.3 TLS_\w+\) id /m);
  });

  it('refuses unknown users and other domains at RCPT, AUTH altogether', async () => {
    const r = await swaks(mx.port, ['--from', 'alice@a.test', '--to', 'nobody@b.test', '--quit-after', 'RCPT']);
    assert.match(r.out, /550 5\.1\.1 nobody@b\.test: no such recipient/);
    const relay = await swaks(mx.port, ['--from', 'alice@a.test', '--to', 'x@elsewhere.test', '--quit-after', 'RCPT']);
    assert.match(relay.out, /550 5\.7\.1 relaying denied: x@elsewhere\.test/);
    assert.doesNotMatch(r.out, /250-AUTH/);
    const auth = await raw(mx.port, [
      { until: /^220 /m },
      { send: 'EHLO x\r\n', until: /^250 /m },
      { send: 'AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n', until: /^5\d\d /m },
    ]);
    assert.match(auth, /^50[02] 5\.5\.\d /m);
    // Nor once STARTTLS has made the session secure, where submission offers it.
    const tls = await swaks(mx.port, [
      '--tls',
      '--auth',
      'PLAIN',
      '--auth-user',
      'bob',
      '--auth-password',
      'secret',
      '--from',
      'alice@a.test',
      '--to',
      'bob@b.test',
    ]);
    assert.match(tls.out, /TLS started with cipher/);
    assert.doesNotMatch(tls.out, /AUTH PLAIN|^<-\s+235 /m);
    assert.match(tls.out, /Host did not advertise authentication/);
  });

  it('answers 552 5.3.4 to a message over the size limit, read to its end, and stores nothing', async () => {
    const small = await startReceive(config('mx-small', `[limits]\nmax_message_bytes = "64K"\n${MX_EXTRA}`));
    try {
      const n = stored('bob').length;
      const line = 'x'.repeat(70) + '\r\n';
      const r = await raw(small.port, [
        { until: /^220 /m },
        { send: 'EHLO client.a.test\r\n', until: /^250 /m },
        { send: 'MAIL FROM:<alice@a.test> SIZE=1000\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n', until: /^354 /m },
        { send: `Subject: big\r\n\r\n${line.repeat(2000)}.\r\n`, until: /^552 .*\r\n/m },
        { send: 'NOOP\r\n', until: /^250 2\.0\.0 /m },
      ]);
      assert.match(r, /^250[- ]SIZE 65536\r$/m);
      assert.match(r, /^552 5\.3\.4 /m);
      assert.equal(stored('bob').length, n);
    } finally {
      await small.stop();
    }
  });

  it('refuses a bare LF in DATA (SMTP smuggling) with 550 5.5.2, also split across chunks, and runs no smuggled command', async () => {
    const n = stored('bob').length;
    const r = await raw(mx.port, [
      { until: /^220 /m },
      { send: 'EHLO client.a.test\r\n', until: /^250 /m },
      { send: 'MAIL FROM:<alice@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n', until: /^354 /m },
      { send: 'Subject: smuggle\r\n\r\nfirst\r', until: /^354 /m },
      { send: '\nsecond\n', until: /^354 /m },
      { send: '.\nMAIL FROM:<mallory@evil.test>\r\nRCPT TO:<carol@b.test>\r\nDATA\r\nsmuggled\r\n.\r\n', until: /^550 .*\r\n/m },
      { send: 'QUIT\r\n', until: /^221 /m },
    ]);
    assert.match(r, /^550 5\.5\.2 bare LF/m);
    assert.equal(r.match(/^250 2\.1\.0 /gm)?.length, 1, 'the smuggled MAIL FROM was never a command');
    assert.equal(stored('bob').length, n);
    await mx.waitLog(/result=550 5\.5\.2/);
  });

  it('refuses a command ended by a bare LF with 550 5.5.2 and closes the connection', async () => {
    const r = await raw(mx.port, [
      { until: /^220 /m },
      { send: 'EHLO client.a.test\r\n', until: /^250 /m },
      { send: 'MAIL FROM:<alice@a.test>\nRCPT TO:<bob@b.test>\r\n', until: /^550 5\.5\.2 .*\r\n/m },
    ]);
    assert.doesNotMatch(r, /2\.1\.0/);
  });

  it('bare LF in swaks --data raw payload: refused', async () => {
    const n = stored('bob').length;
    const r = await swaks(mx.port, [
      '--from',
      'alice@a.test',
      '--to',
      'bob@b.test',
      '--no-data-fixup',
      '--data',
      'Subject: raw\r\n\r\nline one\nline two\r\n.\r\n',
    ]);
    assert.match(r.out, /550 5\.5\.2 bare LF/);
    assert.equal(stored('bob').length, n);
  });

  it('takes a pipelined transaction (swaks --pipeline) in one round trip', async () => {
    const r = await swaks(mx.port, ['--pipeline', '--from', 'alice@a.test', '--to', 'bob@b.test,carol@b.test', '--body', 'pipelined']);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /250-PIPELINING/);
    assert.match(r.out, /250 2\.0\.0 accepted as urn:uuid:/);
  });

  it('answers 451 when the handler is killed; the retry stores the message once', async () => {
    const flag = join(dir, 'killed-once');
    const handler = join(dir, 'kill-once.sh');
    writeFileSync(handler, `#!/bin/sh\nif [ ! -e ${flag} ]; then touch ${flag}; cat >/dev/null; kill -9 $$; fi\nexec handle-incoming-mail "$@"\n`, {
      mode: 0o755,
    });
    const srv = await startReceive(config('mx-kill', `[mx]\ndns_servers = ["127.0.0.1:9"]\nhandler = [${JSON.stringify(handler)}]\n`));
    try {
      const n = stored('bob').length;
      // A retry is the same bytes: fixed Date and Subject, or swaks's clock would make it another message (another digest).
      const fixed = ['--header', 'Message-Id: <retry-1@a.test>', '--header', 'Date: Mon, 23 Nov 2026 10:00:00 +0000', '--header', 'Subject: retry'];
      const send = () => swaks(srv.port, ['--from', 'alice@a.test', '--to', 'bob@b.test', ...fixed, '--body', 'once']);
      const first = await send();
      assert.match(first.out, /^<\*\* +451 4\.3\.0 /m);
      assert.equal(stored('bob').length, n);
      const second = await send();
      assert.match(second.out, /^<- +250 2\.0\.0 accepted as urn:uuid:/m);
      const third = await send();
      assert.match(third.out, /^<- +250 2\.0\.0 accepted as urn:uuid:/m);
      assert.equal(stored('bob').length, n + 1, 'stored once');
    } finally {
      await srv.stop();
    }
  });

  it('answers RCPT 451 4.3.0 when the check cannot run (its routing config unreadable), and takes the address once it can', async () => {
    const routing = join(dir, 'check-routing.toml');
    const srv = await startReceive(
      config('mx-check-broken', `[mx]\ndns_servers = ["127.0.0.1:9"]\ncheck = ["handle-incoming-mail", "--config", ${JSON.stringify(routing)}, "--check"]\n`),
    );
    try {
      const rcpt = async () => (await swaks(srv.port, ['--from', 'alice@a.test', '--to', 'bob@b.test', '--quit-after', 'RCPT'])).out;
      assert.match(await rcpt(), /^<\*\* +451 4\.3\.0 bob@b\.test cannot be checked now; try again later/m);
      copyFileSync(join(dir, 'handle-incoming-mail.toml'), routing);
      assert.match(await rcpt(), /^<- +250 2\.1\.5 /m);
    } finally {
      await srv.stop();
    }
  });

  it("answers 550 with the handler's reason when it exits 1, and 421 4.7.0 closing the connection when it exits 3; nothing stored", async () => {
    // The handler reads the message, prints what `said` holds and exits with the code in `code`.
    const said = join(dir, 'exit-said');
    const code = join(dir, 'exit-code');
    const handler = join(dir, 'exit-with.sh');
    writeFileSync(handler, `#!/bin/sh\ncat >/dev/null\ncat ${said}\nexit $(cat ${code})\n`, { mode: 0o755 });
    const srv = await startReceive(config('mx-exits', `[mx]\ndns_servers = ["127.0.0.1:9"]\nhandler = [${JSON.stringify(handler)}]\n`));
    try {
      const n = stored('bob').length;
      writeFileSync(said, 'FAIL bob@b.test 5.7.1 bob takes no mail from a.test\n');
      writeFileSync(code, '1');
      const refused = await swaks(srv.port, ['--from', 'alice@a.test', '--to', 'bob@b.test', '--body', 'exit 1']);
      assert.match(refused.out, /^<\*\* +550 5\.7\.1 bob takes no mail from a\.test/m);
      // A handler's code of the other class is not the reply's: "550 4.2.2" would say two things at once (RFC 3463).
      writeFileSync(said, 'FAIL bob@b.test 4.2.2 mailbox full\n');
      const mixed = await swaks(srv.port, ['--from', 'alice@a.test', '--to', 'bob@b.test', '--body', 'exit 1']);
      assert.match(mixed.out, /^<\*\* +550 5\.0\.0 bob@b\.test: 4\.2\.2 mailbox full/m);
      writeFileSync(said, 'TEMPFAIL bob@b.test 5.1.1 gone\n');
      writeFileSync(code, '75');
      const later = await swaks(srv.port, ['--from', 'alice@a.test', '--to', 'bob@b.test', '--body', 'exit 75']);
      assert.match(later.out, /^<\*\* +451 4\.3\.0 bob@b\.test: 5\.1\.1 gone/m);
      writeFileSync(code, '1');

      writeFileSync(said, '');
      writeFileSync(code, '3');
      const dropped = await raw(srv.port, [
        { until: /^220 /m },
        { send: 'EHLO client.a.test\r\nMAIL FROM:<alice@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n', until: /^354 /m },
        { send: 'From: alice@a.test\r\nSubject: exit 3\r\n\r\nHi.\r\n.\r\nNOOP\r\n', until: /^421 .*\r\n/m },
      ]);
      assert.match(dropped, /^421 4\.7\.0 closing the connection\r\n$/m);
      // Closed: the NOOP sent behind the message got no answer.
      assert.doesNotMatch(dropped.slice(dropped.indexOf('421 ')), /^250 /m);
      assert.equal(stored('bob').length, n);
    } finally {
      await srv.stop();
    }
  });

  it('SIGTERM: takes no new connection, lets the message in flight finish (250), answers the next command 421, exits 0', async () => {
    // The handler says (on stderr, into the server's log) that it has the message, then waits for the test's word on a FIFO.
    const go = join(dir, 'term-go');
    execFileSync('mkfifo', [go]);
    const handler = join(dir, 'term-wait.sh');
    writeFileSync(handler, `#!/bin/sh\necho has the message >&2\nread word < ${go}\nexec handle-incoming-mail "$@"\n`, { mode: 0o755 });
    const srv = await startReceive(config('mx-term', `[mx]\ndns_servers = ["127.0.0.1:9"]\nhandler = [${JSON.stringify(handler)}]\n`));
    const exited = new Promise<number | null>((res) => srv.proc.once('exit', (code) => res(code)));
    const n = stored('bob').length;
    const c = smtpClient(srv.port);
    await c.until(/^220 /m);
    c.send('EHLO client.a.test\r\nMAIL FROM:<alice@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n');
    await c.until(/^354 /m);
    c.send('From: alice@a.test\r\nSubject: in flight\r\nMessage-ID: <term-1@a.test>\r\n\r\nHi.\r\n.\r\n');
    await srv.waitLog(/has the message/);
    srv.proc.kill('SIGTERM');
    await srv.waitLog(/stopping: no new connections/);
    const late = smtpClient(srv.port);
    await late.closed();
    assert.equal(late.got(), '', 'a connection after SIGTERM is not served');
    writeFileSync(go, 'go\n');
    await c.until(/^250 2\.0\.0 accepted as urn:uuid:/m);
    // Then the session is over: its next command is answered 421 and the connection closed.
    c.send('NOOP\r\n');
    await c.until(/^421 4\.4\.2 .*\r\n/m);
    await c.closed();
    assert.equal(await exited, 0);
    assert.equal(stored('bob').length, n + 1);
  });

  describe('a message stored for some recipients and failed for good for others (handler exit 2)', () => {
    // The handler says what the file `answers` holds, then exits 2.
    const answers = join(dir, 'partial-answers');
    const handler = join(dir, 'partial.sh');
    writeFileSync(handler, `#!/bin/sh\ncat >/dev/null\ncat ${answers}\nexit 2\n`, { mode: 0o755 });
    const queue = join(dir, 'notice-queue');
    mkdirSync(queue);
    const qm = join(dir, 'notice-queue-mail.toml');
    writeFileSync(qm, `queue_dir = ${JSON.stringify(queue)}\n`);
    const mx = `[mx]\ndns_servers = ["127.0.0.1:9"]\nhandler = [${JSON.stringify(handler)}]\n`;
    let srv: Listening;
    before(async () => {
      srv = await startReceive(config('mx-partial', mx, `notice_command = ["queue-mail", "--config", ${JSON.stringify(qm)}]`));
    });
    after(() => srv.stop());
    // queue-mail makes messages/ when it first queues.
    const queued = () => (existsSync(join(queue, 'messages')) ? readdirSync(join(queue, 'messages')).filter((f) => f.endsWith('.ima')) : []);
    const both = ['--to', 'bob@b.test,carol@b.test', '--header', 'Subject: partly'];

    it('queues a notice to the envelope sender naming the failed recipient and its reason, then answers 250', async () => {
      writeFileSync(answers, 'OK bob@b.test\nFAIL carol@b.test 5.2.2 mailbox full\n');
      const before = queued().length;
      const r = await swaks(srv.port, ['--from', 'alice@a.test', ...both, '--body', 'for two']);
      assert.match(r.out, /^<- +250 2\.0\.0 accepted as urn:uuid:/m);
      const fresh = queued().slice(before);
      assert.equal(fresh.length, 1, 'one notice queued before the 250');
      const entries = readMessage(Readable.from([readFileSync(join(queue, 'messages', fresh[0]))]));
      let headers;
      let body = '';
      for await (const e of entries) {
        if (e.kind === 'headers') headers = e.headers;
        else if (e.path === 'body') for await (const c of e.stream) body += c;
      }
      assert.equal(headers!.get('to'), 'alice@a.test');
      assert.equal(headers!.get('notice'), 'failure');
      assert.equal(headers!.get('subject'), 'Undelivered: partly');
      assert.match(headers!.get('from')!, /<mailer-daemon@mx\.b\.test>/);
      assert.match(body, /carol@b\.test: 5\.2\.2 mailbox full \(1 attempt\)/);
      assert.doesNotMatch(body, /bob@b\.test/, 'the delivered recipient is not reported');
      await srv.waitLog(/not delivered to carol@b\.test FAIL 5\.2\.2 mailbox full; notice to <alice@a\.test> as \S+/);
    });

    it('answers 451 while a recipient may still be delivered (TEMPFAIL), and queues no notice', async () => {
      writeFileSync(answers, 'OK bob@b.test\nTEMPFAIL carol@b.test 4.2.1 try later\n');
      const before = queued().length;
      const r = await swaks(srv.port, ['--from', 'alice@a.test', ...both, '--body', 'again']);
      assert.match(r.out, /^<\*\* +451 4\.3\.0 delivered to some recipients, not yet to all/m);
      assert.equal(queued().length, before);
    });

    it('sends no notice for a null sender (a bounce itself) and still answers 250', async () => {
      writeFileSync(answers, 'OK bob@b.test\nNORECIPIENT carol@b.test\n');
      const before = queued().length;
      const r = await swaks(srv.port, ['--from', '<>', ...both, '--body', 'a bounce']);
      assert.match(r.out, /^<- +250 2\.0\.0 accepted as urn:uuid:/m);
      assert.equal(queued().length, before);
      await srv.waitLog(/not delivered to carol@b\.test NORECIPIENT; notice none \(null sender\)/);
    });

    it('says 5.1.1 for a NORECIPIENT in the notice, as the DATA reply would', async () => {
      writeFileSync(answers, 'OK bob@b.test\nNORECIPIENT carol@b.test\n');
      const had = queued();
      const r = await swaks(srv.port, ['--from', 'alice@a.test', ...both, '--body', 'to a stranger']);
      assert.match(r.out, /^<- +250 2\.0\.0 accepted as urn:uuid:/m);
      // Queue ids sort by the second they were made in, and then at random: the new one need not be last.
      const fresh = queued().filter((f) => !had.includes(f));
      assert.equal(fresh.length, 1, 'one notice queued');
      assert.match(readFileSync(join(queue, 'messages', fresh[0])).toString('latin1'), /carol@b\.test: 5\.1\.1 no such recipient \(1 attempt\)/);
    });

    it('answers 250, not 550, for a sender no notice can be written to (an SMTP address IMA has no form for), and logs why none was sent', async () => {
      writeFileSync(answers, 'OK bob@b.test\nFAIL carol@b.test 5.2.2 mailbox full\n');
      for (const sender of ['a|b@a.test', '-x@a.test', 'bounce@[192.0.2.1]']) {
        const before = queued().length;
        // Spoken by hand: swaks takes "-x@a.test" for an option.
        const r = await raw(srv.port, [
          { until: /^220 /m },
          { send: 'EHLO client.a.test\r\n', until: /^250 /m },
          { send: `MAIL FROM:<${sender}>\r\nRCPT TO:<bob@b.test>\r\nRCPT TO:<carol@b.test>\r\nDATA\r\n`, until: /^354 /m },
          { send: `Subject: partly\r\n\r\nfrom ${sender}\r\n.\r\n`, until: /^(?:250 2\.0\.0|[45]\d\d) .*\r\n/m },
          { send: 'QUIT\r\n', until: /^221 /m },
        ]);
        assert.match(r, /^250 2\.0\.0 accepted as urn:uuid:/m, `${sender}: ${r}`);
        assert.equal(queued().length, before, `${sender}: no notice`);
        const logged = sender.replace(/[|.[\]]/g, '\\$&');
        await srv.waitLog(new RegExp(`not delivered to carol@b\\.test FAIL 5\\.2\\.2 mailbox full; notice none \\(the sender <${logged}> is no IMA address: `));
      }
    });

    it('answers 451 when the notice cannot be handed on', async () => {
      const failing = await startReceive(config('mx-partial-nonotice', mx, 'notice_command = ["false"]'));
      try {
        writeFileSync(answers, 'OK bob@b.test\nFAIL carol@b.test 5.2.2 mailbox full\n');
        const r = await swaks(failing.port, ['--from', 'alice@a.test', ...both, '--body', 'no notice']);
        assert.match(r.out, /^<\*\* +451 4\.3\.0 the notice to alice@a\.test of the recipients that failed was not taken \(false exited 1\)/m);
      } finally {
        await failing.stop();
      }
    });
  });
});
