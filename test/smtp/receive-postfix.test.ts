// A real MTA's dialogue: a private Postfix relays a message to smtp-receive
// (relayhost = [127.0.0.1]:PORT), over STARTTLS, with pipelining as Postfix does it.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Listening } from '../helpers.js';
import { MX_EXTRA, arrival, config, headersOf, startReceive, stored, swaks } from './receive-fixture.js';
import { type Postfix, postfixUnavailable, startPostfix } from '../postfix-fixture.js';

const missing = postfixUnavailable();

describe('smtp-receive behind Postfix', { skip: missing ? `skipped: ${missing}` : false }, () => {
  let mx: Listening;
  let postfix: Postfix;
  before(async () => {
    mx = await startReceive(config('mx-postfix', MX_EXTRA));
    postfix = await startPostfix({ hostname: 'relay.a.test', relayhost: `[127.0.0.1]:${mx.port}`, main: { smtp_tls_security_level: 'encrypt' } });
  });
  after(async () => {
    await postfix?.stop();
    await mx?.stop();
  });

  it('takes a message Postfix relays, over TLS, into the envelope recipient mailbox', async () => {
    const n = stored('carol').length;
    const r = await swaks(postfix.port, ['--from', 'alice@a.test', '--to', 'carol@b.test', '--header', 'Subject: via Postfix', '--body', 'relayed']);
    assert.equal(r.code, 0, r.out);
    await arrival('carol', n + 1);
    const id = stored('carol').find((d) => headersOf('carol', d).includes('subject: via Postfix'))!;
    const h = headersOf('carol', id);
    assert.match(h, /^received: from relay\.a\.test \(127\.0\.0\.1\) by mx\.b\.test with ESMTPS \(TLSv1\.\d \S+\) id /m);
    assert.match(h, /^received: from .* by relay\.a\.test \(Postfix\)/m);
    await postfix.logged(/status=sent \(250 2\.0\.0 accepted as urn:uuid:/);
  });
});
