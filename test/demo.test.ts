import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { ROOT, runCommand } from './helpers.js';

test("npm run demo: a message from a.test lands in bob@b.test's mailbox, bob fetches it, and everything stops", async () => {
  const r = await runCommand(process.execPath, [join(ROOT, 'dist', 'demo', 'demo.js')]);
  assert.equal(r.code, 0, r.stderr);
  const out = r.stdout.toString();
  assert.match(out, /^OK bob@b\.test$/m);
  assert.match(out, /received: from a\.test \(127\.0\.0\.1; cert sha256 [0-9a-f]{16}; from aligned\) by b\.test with IMDP/);
  assert.match(out, /The attachment arrived byte for byte/);
  assert.match(r.stderr, /fetch-mail: fetched 1 message \(\d+ bytes\) into .*bob\/Mail; 0 left on the server/);
  assert.match(out, /^Agenda:$/m);
});
