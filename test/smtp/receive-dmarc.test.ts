// The mx role's verdicts end to end: DNS from a private dnsmasq on loopback
// (mx.dns_servers), a message whose domain publishes DMARC p=reject refused
// with 550 5.7.1, one from an SPF-permitted sender recorded as passing.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import type { Listening } from '../helpers.js';
import { config, headersOf, startReceive, stored, swaks } from './receive-fixture.js';
import { freePort } from '../helpers.js';

const DNSMASQ = '/usr/sbin/dnsmasq';

describe('smtp-receive DMARC and SPF with DNS from dnsmasq', { skip: existsSync(DNSMASQ) ? false : 'skipped: dnsmasq not installed (dnsmasq-base)' }, () => {
  let dns: ChildProcess;
  let mx: Listening;
  before(async () => {
    const port = await freePort();
    dns = spawn(
      DNSMASQ,
      [
        '--keep-in-foreground',
        '--no-resolv',
        '--no-hosts',
        '--no-poll',
        '--bind-interfaces',
        '--listen-address=127.0.0.1',
        `--port=${port}`,
        '--user=root',
        '--pid-file=',
        '--log-facility=-',
        '--txt-record=strict.test,v=spf1 ip4:192.0.2.1 -all',
        '--txt-record=_dmarc.strict.test,v=DMARC1; p=reject',
        '--txt-record=friendly.test,v=spf1 ip4:127.0.0.1 -all',
        '--txt-record=_dmarc.friendly.test,v=DMARC1; p=reject',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let err = '';
    await new Promise<void>((res, rej) => {
      dns.stderr!.on('data', (d) => {
        err += d;
        if (/started, version/.test(err)) res();
      });
      dns.on('exit', (c) => rej(new Error(`dnsmasq exited ${c}: ${err}`)));
    });
    mx = await startReceive(config('mx-dmarc', `[mx]\ndns_servers = ["127.0.0.1:${port}"]\n`));
  });
  after(async () => {
    await mx?.stop();
    dns?.kill('SIGTERM');
  });

  it('refuses with 550 5.7.1 a message failing DMARC under p=reject, and stores nothing', async () => {
    const n = stored('bob').length;
    const r = await swaks(mx.port, ['--from', 'ceo@strict.test', '--to', 'bob@b.test', '--header', 'From: ceo@strict.test', '--body', 'pay this']);
    assert.match(r.out, /^<\*\* +550 5\.7\.1 DMARC policy of the From: domain is reject.*spf=fail dkim=none dmarc=fail/m);
    assert.equal(stored('bob').length, n);
  });

  it('records spf=pass and dmarc=pass for a sender the domain permits', async () => {
    const r = await swaks(mx.port, ['--from', 'news@friendly.test', '--to', 'bob@b.test', '--header', 'From: news@friendly.test', '--body', 'hello']);
    const id = /accepted as urn:uuid:(\S+)/.exec(r.out)?.[1];
    assert.ok(id, r.out);
    assert.match(headersOf('bob', id), /^authentication-results: mx\.b\.test; dkim=none .*; spf=pass .*smtp\.mailfrom=news@friendly\.test.*; dmarc=pass /m);
  });
});
