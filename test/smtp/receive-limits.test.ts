// smtp-receive's limits (smtp-receive.toml(5) [limits] and [timeouts]), each
// met by a real client on loopback: recipients per message, the command line,
// the header block, connections in total and per client address (told apart
// by their source address, 127.0.0.x), and the idle timeout.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Listening } from '../helpers.js';
import { MX_EXTRA, arrival, config, headersOf, raw, smtpClient, startReceive, stored } from './receive-fixture.js';

/** Matches once the server has given n final replies ("250 ...", not "250-..."). */
const replies = (n: number) => new RegExp(`(?:^\\d{3} [^\\r\\n]*\\r\\n[\\s\\S]*?){${n}}`, 'm');
/** The i-th final reply line of a transcript (from 0). */
const reply = (out: string, i: number) => (out.match(/^\d{3} [^\r\n]*/gm) ?? [])[i] ?? '(no such reply)';
const holding = (user: string, marker: string) => stored(user).filter((m) => headersOf(user, m).includes(marker));

describe('smtp-receive limits on a session', () => {
  let mx: Listening;
  before(async () => {
    mx = await startReceive(
      config('limits', `${MX_EXTRA}[limits]\nmax_recipients = 2\nmax_command_line = 512\nmax_header_bytes = "1K"\n[timeouts]\nidle = "1s"\n`),
    );
  });
  after(() => mx.stop());

  /** A small message to bob, accepted (250) on a session of its own. */
  async function deliverMarker(marker: string): Promise<void> {
    const out = await raw(mx.port, [
      { until: replies(1) },
      { send: 'EHLO client.a.test\r\nMAIL FROM:<alice@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n', until: replies(5) },
      { send: `From: alice@a.test\r\nMessage-ID: <${marker}@a.test>\r\n\r\nHi.\r\n.\r\n`, until: replies(6) },
      { send: 'QUIT\r\n', until: replies(7) },
    ]);
    assert.match(reply(out, 5), /^250 /, out);
  }

  it('refuses a recipient past max_recipients with 452 4.5.3 and delivers to the two it took', async () => {
    const [bob, carol] = [stored('bob').length, stored('carol').length];
    const out = await raw(mx.port, [
      { until: replies(1) },
      { send: 'EHLO client.a.test\r\n', until: replies(2) },
      { send: 'MAIL FROM:<alice@a.test>\r\n', until: replies(3) },
      { send: 'RCPT TO:<bob@b.test>\r\n', until: replies(4) },
      { send: 'RCPT TO:<carol@b.test>\r\n', until: replies(5) },
      { send: 'RCPT TO:<dave@b.test>\r\n', until: replies(6) },
      { send: 'DATA\r\n', until: replies(7) },
      { send: 'From: alice@a.test\r\nSubject: three\r\nMessage-ID: <limits-rcpt@a.test>\r\n\r\nHi.\r\n.\r\n', until: replies(8) },
      { send: 'QUIT\r\n', until: replies(9) },
    ]);
    assert.match(reply(out, 3), /^250 /, out);
    assert.match(reply(out, 4), /^250 /, out);
    assert.match(reply(out, 5), /^452 4\.5\.3 too many recipients \(at most 2 per message\)/, out);
    assert.match(reply(out, 7), /^250 /, out);
    await arrival('bob', bob + 1);
    await arrival('carol', carol + 1);
    assert.equal(holding('bob', 'limits-rcpt').length, 1);
    assert.equal(holding('carol', 'limits-rcpt').length, 1);
  });

  it('closes a session whose command line passes max_command_line with a 421', async () => {
    const c = smtpClient(mx.port);
    await c.until(replies(1));
    c.send(`EHLO ${'a'.repeat(600)}.test\r\n`);
    await c.until(replies(2));
    await c.closed();
    assert.match(reply(c.got(), 1), /^421 4\.\d\.\d .*too long/i, c.got());
  });

  it('refuses a message whose header block passes max_header_bytes, and stores nothing', async () => {
    const bob = stored('bob').length;
    const out = await raw(mx.port, [
      { until: replies(1) },
      { send: 'EHLO client.a.test\r\nMAIL FROM:<alice@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n', until: replies(5) },
      {
        send: `From: alice@a.test\r\nSubject: ${'long '.repeat(300)}\r\nMessage-ID: <limits-head@a.test>\r\n\r\nHi.\r\n.\r\n`,
        until: replies(6),
      },
      { send: 'QUIT\r\n', until: replies(7) },
    ]);
    assert.match(reply(out, 5), /^550 5\.6\.0 .*max_header_bytes/, out);
    // A refused message leaves nothing behind: a later one does arrive, this one never did.
    await deliverMarker('limits-after-head');
    await arrival('bob', bob + 1);
    assert.equal(holding('bob', 'limits-head').length, 0);
  });

  it('tells a client silent past the idle timeout 421 and closes the connection, in DATA too, storing nothing', async () => {
    const c = smtpClient(mx.port);
    await c.until(replies(1));
    const t0 = Date.now();
    await c.until(replies(2));
    await c.closed();
    assert.match(reply(c.got(), 1), /^421 4\.4\.2 /, c.got());
    assert.ok(Date.now() - t0 >= 900, `closed after ${Date.now() - t0} ms, before the 1 s idle timeout`);

    const bob = stored('bob').length;
    const d = smtpClient(mx.port);
    await d.until(replies(1));
    d.send('EHLO client.a.test\r\nMAIL FROM:<alice@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n');
    await d.until(replies(5));
    d.send('From: alice@a.test\r\nMessage-ID: <limits-idle@a.test>\r\n\r\nHalf a mess');
    await d.until(replies(6));
    await d.closed();
    assert.match(reply(d.got(), 5), /^421 4\.4\.2 /, d.got());
    await deliverMarker('limits-after-idle');
    await arrival('bob', bob + 1);
    assert.equal(holding('bob', 'limits-idle').length, 0);
  });
});

it('with implicit TLS, a client that never starts the handshake is closed after the idle timeout', async () => {
  const srv = await startReceive(config('limits-tls', `${MX_EXTRA}[timeouts]\nidle = "1s"\n`), ['--implicit-tls']);
  try {
    const c = smtpClient(srv.port);
    const t0 = Date.now();
    await c.closed();
    assert.ok(Date.now() - t0 >= 900, `closed after ${Date.now() - t0} ms, before the 1 s idle timeout`);
    assert.equal(c.got(), '', 'nothing in clear text');
  } finally {
    await srv.stop();
  }
});

/**
 * A session from `address` once the server has a place for it: a place is
 * freed when the server has seen the other session's close, which can come
 * a moment after the client saw it, so a 421 meanwhile is tried again (5 s at most).
 */
async function greeted(port: number, address: string) {
  for (const t0 = Date.now(); ;) {
    const c = smtpClient(port, address);
    await c.until(replies(1));
    if (/^220 /.test(c.got()) || Date.now() - t0 > 5000) return c;
    await c.closed();
  }
}

describe('smtp-receive limits on connections', () => {
  let mx: Listening;
  before(async () => {
    mx = await startReceive(config('conns', `${MX_EXTRA}[limits]\nmax_connections = 2\nmax_connections_per_address = 1\n`));
  });
  after(() => mx.stop());

  it('refuses a second connection from one address and a third in all with 421, and takes one again once a place is free', async () => {
    const a = smtpClient(mx.port, '127.0.0.1');
    await a.until(replies(1));
    assert.match(reply(a.got(), 0), /^220 /);

    const sameAddress = smtpClient(mx.port, '127.0.0.1');
    await sameAddress.until(replies(1));
    await sameAddress.closed();
    assert.match(reply(sameAddress.got(), 0), /^421 4\.7\.0 too many connections from your address/, sameAddress.got());

    const b = await greeted(mx.port, '127.0.0.2');
    assert.match(reply(b.got(), 0), /^220 /, b.got());

    const third = smtpClient(mx.port, '127.0.0.3');
    await third.until(replies(1));
    await third.closed();
    assert.match(reply(third.got(), 0), /^421 4\.7\.0 mx\.b\.test too many connections; try again later/, third.got());

    // The sessions held still work, and a place freed is a place taken again.
    a.send('QUIT\r\n');
    await a.until(replies(2));
    await a.end();
    const again = await greeted(mx.port, '127.0.0.1');
    assert.match(reply(again.got(), 0), /^220 /, again.got());
    b.send('NOOP\r\n');
    await b.until(replies(2));
    assert.match(reply(b.got(), 1), /^250 /);
    await Promise.all([again.end(), b.end()]);
  });
});
