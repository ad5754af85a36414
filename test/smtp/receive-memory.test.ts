// smtp-receive's memory: mailauth (SPF/DKIM/DMARC) is loaded only by a
// server whose config turns verdicts on, so an mx without them, or a
// submission server, does not carry it (about 10 MB resident since the
// bundle leaves out its BIMI packages until used, scripts/stand-ins.cjs).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { MX_EXTRA, config, startReceive } from './receive-fixture.js';

const residentMb = (pid: number) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;

async function idleRss(file: string): Promise<number> {
  const srv = await startReceive(file);
  try {
    return residentMb(srv.proc.pid!);
  } finally {
    await srv.stop();
  }
}

describe('smtp-receive memory', () => {
  it('an mx with verdicts off does not load mailauth: at least 6 MB less resident than one with them on', async () => {
    const on = await idleRss(config('mem-on', MX_EXTRA));
    const off = await idleRss(config('mem-off', `${MX_EXTRA}verdicts = false\n`));
    assert.ok(off <= on - 6, `verdicts off: ${off.toFixed(1)} MB, on: ${on.toFixed(1)} MB`);
  });
});
