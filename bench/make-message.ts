// make-message with a 1 GiB attachment to /dev/null: MB/s and peak RSS of the
// process; then the reader draining the same message; then start-up time.
import { closeSync, createReadStream, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readMessage } from '../src/message/index.js';
import { mb, measure, patternFile, startupMs } from './_measure.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SIZE = Number(process.env.BENCH_BYTES ?? 1024 ** 3);

export async function run(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ima-bench-'));
  try {
    const att = join(dir, 'big.bin');
    patternFile(att, SIZE);
    const bin = join(ROOT, 'bin', 'make-message');
    const devnull = openSync('/dev/null', 'w');
    const r = await measure([bin, '-r', 'a@a.test', '--no-body', '-a', att, 'b@b.test'], { stdout: devnull });
    closeSync(devnull);
    if (r.code !== 0) throw new Error(`make-message failed: ${r.stderr}`);
    console.log(
      `make-message ${mb(SIZE).toFixed(0)} MiB attachment -> /dev/null: ${(mb(SIZE) / r.seconds).toFixed(0)} MB/s, peak RSS ${r.peakRssMb.toFixed(1)} MB`,
    );

    const msg = join(dir, 'big.ima');
    const fd = openSync(msg, 'w');
    const w = await measure([bin, '-r', 'a@a.test', '--no-body', '-a', att, 'b@b.test'], { stdout: fd });
    closeSync(fd);
    if (w.code !== 0) throw new Error(w.stderr);
    const rss0 = process.memoryUsage().rss;
    const t0 = process.hrtime.bigint();
    let bytes = 0;
    let peak = rss0;
    for await (const e of readMessage(createReadStream(msg, { highWaterMark: 1024 * 1024 }))) {
      if (e.kind === 'headers') continue;
      for await (const c of e.stream) {
        bytes += (c as Buffer).length;
        if ((bytes & 0xfffffff) < (c as Buffer).length) peak = Math.max(peak, process.memoryUsage().rss);
      }
    }
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    console.log(`readMessage ${mb(bytes).toFixed(0)} MiB message drained: ${(mb(bytes) / secs).toFixed(0)} MB/s, RSS growth ${mb(peak - rss0).toFixed(1)} MB`);

    const bare = startupMs([process.execPath, '-e', '0']);
    const mm = startupMs([bin, '--version']);
    console.log(`start-up: node -e 0 ${bare.toFixed(0)} ms, make-message --version ${mm.toFixed(0)} ms (median of 10)`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
