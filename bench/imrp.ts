// IMRP: fetch-mail from post-office over TLS on loopback, both real
// processes. 2,000 messages of 4 KB (messages/s, every one fsync'ed before
// the server deletes it), then one 1 GiB attachment (MB/s, peak RSS of
// both processes).
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { makeCa, makeLeaf } from '../src/cert.js';
import { deliverToMailbox } from '../src/mailbox.js';
import { hashPassword } from '../src/password.js';
import { type Listening, startListening } from '../test/helpers.js';
import { mb, measure, patternFile, peakRssMb, smallMessage } from './_measure.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = join(ROOT, 'bin');
const env: NodeJS.ProcessEnv = {
  ...process.env,
  PATH: `${BIN}:${process.env.PATH}`,
  IMA_CONFIG_DIR: '/nonexistent',
  IMA_PASSWORD: 'bench',
  IMA_ALLOW_ROOT: '1',
};

export async function run(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ima-bench-imrp-'));
  let po: Listening | undefined;
  try {
    const ca = makeCa('bench CA', 'bench', { days: 2 }, 2048);
    const leaf = makeLeaf(ca, { purpose: 'server', commonName: 'b.test', dnsNames: ['b.test'], organization: 'bench' }, { days: 2 });
    writeFileSync(join(dir, 'ca.crt'), ca.certPem);
    writeFileSync(join(dir, 'b.crt'), leaf.certPem);
    writeFileSync(join(dir, 'b.key'), leaf.keyPem);
    const box = join(dir, 'bob');
    for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(box, f), { recursive: true });
    writeFileSync(
      join(dir, 'po.toml'),
      `name = "b.test"\n[tls]\ncertificate = "b.crt"\nkey = "b.key"\nca = ["ca.crt"]\n[users.bob]\nmailbox = "bob"\npassword = "${await hashPassword('bench')}"\n`,
    );
    writeFileSync(join(dir, 'fm.toml'), `server = "127.0.0.1"\nserver_name = "b.test"\nport = PORT\nuser = "bob"\nca = ["ca.crt"]\nmax_message_bytes = "2G"\n`);
    // give-recipient stores the big message: its config (found through IMA_CONFIG_DIR) makes room for it.
    writeFileSync(join(dir, 'give-recipient.toml'), 'max_message_bytes = "2G"\n');
    env.IMA_CONFIG_DIR = dir;
    const n = Number(process.env.BENCH_MESSAGES ?? 2000);
    for (let i = 0; i < n; i++) await deliverToMailbox(box, Readable.from([await smallMessage()]));
    const server = (po = await startListening('post-office', ['--config', join(dir, 'po.toml'), '--listen', '127.0.0.1:0'], { env }));
    writeFileSync(join(dir, 'fm.toml'), readFileSync(join(dir, 'fm.toml'), 'utf8').replace('PORT', String(server.port)));
    const small = await measure([join(BIN, 'fetch-mail'), '--config', join(dir, 'fm.toml'), join(dir, 'local-small')], { env });
    if (small.code !== 0) throw new Error(`fetch-mail failed: ${small.stderr}`);
    console.log(
      `fetch ${n} messages of 4 KB: ${(n / small.seconds).toFixed(0)} msg/s (${small.seconds.toFixed(2)} s, process start and TLS included), fetch-mail peak RSS ${small.peakRssMb.toFixed(1)} MB`,
    );

    const size = Number(process.env.BENCH_BYTES ?? 1024 ** 3);
    const att = join(dir, 'big.bin');
    patternFile(att, size);
    const mk = spawn(join(BIN, 'give-recipient'), [box], { env, stdio: ['pipe', 'ignore', 'inherit'] });
    const maker = spawn(join(BIN, 'make-message'), ['-r', 'a@a.test', '--no-body', '-a', att, 'bob@b.test'], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    maker.stdout!.pipe(mk.stdin!);
    const [stored] = (await once(mk, 'exit')) as [number];
    rmSync(att);
    if (stored !== 0) throw new Error(`give-recipient could not store the ${mb(size).toFixed(0)} MiB message (exit ${stored})`);
    const before = peakRssMb(server.proc.pid!);
    const big = await measure([join(BIN, 'fetch-mail'), '--config', join(dir, 'fm.toml'), join(dir, 'local-big')], { env });
    if (big.code !== 0) throw new Error(`fetch-mail failed: ${big.stderr}`);
    console.log(
      `fetch one ${mb(size).toFixed(0)} MiB attachment: ${(mb(size) / big.seconds).toFixed(0)} MB/s, peak RSS fetch-mail ${big.peakRssMb.toFixed(1)} MB, post-office ${Math.max(before, peakRssMb(server.proc.pid!)).toFixed(1)} MB`,
    );
  } finally {
    await po?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
