// IMDP's MAIL size: the code takes exactly what ima(7)'s grammar allows.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseCommand } from '../../src/imdp/wire.js';
import { ROOT } from '../helpers.js';

test('MAIL size: the longest size the ima(7) grammar allows is taken exactly, one digit more is an error', () => {
  const page = readFileSync(join(ROOT, 'man/man7/ima.7'), 'utf8');
  const digits = Number(/^size\s+=\s+1\*(\d+)DIGIT/m.exec(page)?.[1]);
  assert.ok(digits > 0, 'ima(7) states the size grammar');
  const longest = '9'.repeat(digits);
  assert.deepEqual(parseCommand(`MAIL ${longest}`), { verb: 'MAIL', size: Number(longest) });
  assert.equal(String(Number(longest)), longest, 'no rounding: the number is the one sent');
  for (const tooLong of [`1${'0'.repeat(digits)}`, '9007199254740993', '99999999999999999999']) {
    const c = parseCommand(`MAIL ${tooLong}`);
    assert.equal(c.verb, 'bad', tooLong);
    assert.match((c as { reason: string }).reason, /at most 15 digits/);
  }
  assert.equal(parseCommand('MAIL 012').verb, 'bad', 'no leading 0');
  assert.deepEqual(parseCommand('MAIL 0'), { verb: 'MAIL', size: 0 });
});
