// The failed-login table: counts per address and per user, decaying, bounded.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LoginGuard } from '../../src/net/login-guard.js';
import { dummyHash, hashParameters, hashPassword, verifyPassword } from '../../src/password.js';

const limits = { maxFailures: 3, decay: 60_000, delay: 100, maxEntries: 1000 };

function clocked() {
  let now = 1_000_000;
  const guard = new LoginGuard(limits, () => now);
  return { guard, pass: (ms: number) => (now += ms) };
}

describe('LoginGuard', () => {
  it('counts failures per address and per user; either count over the limit locks password logins', () => {
    const { guard } = clocked();
    for (let i = 0; i < 3; i++) guard.fail('192.0.2.1', `u${i}`);
    assert.equal(guard.locked('192.0.2.1', 'anyone'), true, 'by address, whatever the user');
    assert.equal(guard.locked('192.0.2.2', 'u0'), false);
    for (const a of ['192.0.2.7', '192.0.2.8', '192.0.2.9']) guard.fail(a, 'bob');
    assert.equal(guard.locked('198.51.100.1', 'bob'), true, 'by user, whatever the address');
    assert.deepEqual(guard.standing('192.0.2.7', 'carol'), { address: 1, user: 0 });
  });

  it('forgets one failure per decay interval, so a locked address gets a try again in time', () => {
    const { guard, pass } = clocked();
    for (let i = 0; i < 3; i++) guard.fail('192.0.2.1', 'bob');
    assert.equal(guard.locked('192.0.2.1', 'carol'), true);
    pass(59_999);
    assert.equal(guard.locked('192.0.2.1', 'carol'), true);
    pass(1);
    assert.equal(guard.locked('192.0.2.1', 'carol'), false);
    assert.deepEqual(guard.standing('192.0.2.1', 'bob'), { address: 2, user: 2 });
    pass(120_000);
    assert.deepEqual(guard.standing('192.0.2.1', 'bob'), { address: 0, user: 0 });
    assert.deepEqual(guard.size, { addresses: 0, users: 0 }, 'forgiven entries leave the table');
  });

  it('counts a password being checked as failed at once, so parallel tries stop at the limit; a right one takes back only itself', () => {
    const { guard } = clocked();
    const tries = Array.from({ length: 8 }, (_, i) => guard.begin(`192.0.2.${i}`, 'carol'));
    assert.equal(tries.filter(Boolean).length, 3, 'three tried, five refused unheard');
    assert.deepEqual(tries[2]!.standing, { address: 1, user: 3 });
    tries[0]!.succeeded();
    tries[0]!.succeeded();
    assert.deepEqual(guard.standing('192.0.2.1', 'carol'), { address: 1, user: 2 }, 'one success, taken back once');
    const own = guard.begin('192.0.2.1', 'mallory')!;
    own.succeeded();
    assert.deepEqual(guard.standing('192.0.2.1', 'carol'), { address: 1, user: 2 }, "a login to one's own account clears no earlier failure");
  });

  it('slows each failure by login_delay times the count, at most ten times', () => {
    const { guard } = clocked();
    assert.equal(guard.delayFor(guard.fail('a', 'b')), 100);
    assert.equal(guard.delayFor({ address: 2, user: 40 }), 1000);
  });

  it('never grows past maxEntries, whatever the flood of addresses and names', () => {
    const { guard } = clocked();
    for (let i = 0; i < 20_000; i++) guard.fail(`10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`, `user${i}`);
    assert.deepEqual(guard.size, { addresses: 1000, users: 1000 });
    assert.equal(guard.standing('10.0.78.31', 'user19999').address, 1, 'the newest are kept');
  });
});

describe('dummy hash for unknown users', () => {
  it('has the parameters of the configured users, so an unknown user costs what a known one does', async () => {
    const strong = 'scrypt$65536$8$2$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=';
    const weak = 'scrypt$1024$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=';
    assert.equal(hashParameters(dummyHash([strong, strong, weak, undefined])), '65536$8$2');
    assert.equal(hashParameters(dummyHash([weak])), '1024$8$1');
    assert.equal(hashParameters(dummyHash([])), hashParameters(await hashPassword('x')), 'no password users: the defaults');
    assert.equal(await verifyPassword('x', undefined, dummyHash([weak])), false);
  });
});
