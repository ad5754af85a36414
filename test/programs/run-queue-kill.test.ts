// run-queue SIGKILLed at random points: nothing is lost, and no IMA
// recipient gets a message twice. Each trial queues a message and starts
// run-queue --once, killed once its log reaches a random length (an event,
// not a delay: anywhere from start-up to after the last state write);
// at the end an uninterrupted run empties the queue, and every mailbox must
// hold exactly the messages queued for it, each once.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { BIN, runBin, runMain, tempDir, testEnv } from '../helpers.js';
import { type Server, certs, config, message, pki, startServer } from '../imdp-fixture.js';

const TRIALS = Number(process.env.QUEUE_KILL_TRIALS ?? 200);
// A trial costs a node start-up (0.1-0.2 s idle, ten times that on a loaded
// machine): no new trial starts after this budget, and at least a quarter of them must have run.
const BUDGET_MS = Number(process.env.QUEUE_KILL_BUDGET_MS ?? 40_000);
const LANES = 2; // two queues killed side by side: a trial waits mostly on a start-up, and the rest of the suite shares the two cores
const servers: Server[] = [];
after(async () => Promise.all(servers.map((s) => s.stop())));

const mail = tempDir('ima-kill-mail-');
const USERS = { 'b.test': ['bob', 'dan'], 'c.test': ['carol'] } as const;

async function imaServer(domain: 'b.test' | 'c.test'): Promise<Server> {
  const him = join(mail, `${domain}.toml`);
  writeFileSync(him, `[domains."${domain}"]\ncommand = ["give-recipient", "--address", "{address}", "${join(mail, domain, '{local}')}"]\n`);
  for (const u of USERS[domain]) for (const d of ['tmp', 'new', 'cur']) mkdirSync(join(mail, domain, u, d), { recursive: true });
  const s = await startServer(config({ domain, cert: domain === 'b.test' ? certs.b : certs.c, handler: ['handle-incoming-mail', '--config', him] }));
  servers.push(s);
  return s;
}

function lane(i: number, sendMail: string) {
  const dir = tempDir(`ima-kill-${i}-`);
  writeFileSync(join(dir, 'queue-mail.toml'), 'queue_dir = "queue"\n');
  writeFileSync(join(dir, 'list-queue.toml'), 'queue_dir = "queue"\n');
  // No waiting between retries: every trial finds work.
  writeFileSync(
    join(dir, 'run-queue.toml'),
    `queue_dir = "queue"\ncommand = ["send-mail", "--config", "${sendMail}"]\nmin_backoff = "0s"\nmax_backoff = "0s"\ndomain_defer = "0s"\n`,
  );
  return { dir, env: testEnv({ IMA_CONFIG_DIR: dir }) };
}

/** Start run-queue --once; SIGKILL it when its log reaches `at` bytes (or let it end). Resolves when it is gone. */
async function killedRun(env: Record<string, string | undefined>, at: number): Promise<{ killed: boolean; log: string }> {
  const proc = spawn(join(BIN, 'run-queue'), ['--once', '--verbose'], { env: env as NodeJS.ProcessEnv, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  let killed = false;
  proc.stderr.on('data', (d: Buffer) => {
    log += d;
    if (!killed && log.length >= at) {
      killed = true;
      proc.kill('SIGKILL');
    }
  });
  if (at === 0) {
    killed = true;
    proc.kill('SIGKILL');
  }
  await once(proc, 'close');
  return { killed: killed && proc.signalCode === 'SIGKILL', log };
}

/** Message ids stored in a mailbox (new/ and cur/), with repeats. */
function stored(domain: string, user: string): string[] {
  return ['new', 'cur'].flatMap((d) => readdirSync(join(mail, domain, user, d)).filter((n) => !n.startsWith('.')));
}

test(`run-queue: SIGKILLed at random points in up to ${TRIALS} trials, it loses nothing and delivers no IMA recipient twice`, async () => {
  const b = await imaServer('b.test');
  const c = await imaServer('c.test');
  const sendMail = join(mail, 'send-mail.toml');
  writeFileSync(
    sendMail,
    `domain = "a.test"\ndns_srv = false\n[tls]\ncertificate = "${certs.a.cert}"\nkey = "${certs.a.key}"\nca = ["${pki.caFile}"]\n[servers]\n"b.test" = "127.0.0.1:${b.port}"\n"c.test" = "127.0.0.1:${c.port}"\n`,
  );
  const lanes = Array.from({ length: LANES }, (_, i) => lane(i, sendMail));
  const expected = new Map<string, string[]>(); // mailbox -> message ids (uuid)
  const recipientsOf = (k: number) =>
    k % 3 === 0 ? ['bob@b.test', 'carol@c.test'] : k % 3 === 1 ? ['dan@b.test'] : ['bob@b.test', 'dan@b.test', 'carol@c.test'];
  let k = 0;
  let kills = 0;
  // The length of an uninterrupted run's log, learnt as trials go: kill points spread over all of it.
  let longest = 400;
  const deadline = Date.now() + BUDGET_MS;
  let trials = 0;
  await Promise.all(
    lanes.map(async (l) => {
      for (let t = 0; t < TRIALS / LANES && Date.now() < deadline; t++) {
        trials++;
        const n = k++;
        const uuid = `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`;
        const rcpts = recipientsOf(n);
        const q = await runMain('queue-mail', [], {
          env: l.env,
          input: await message([
            ['from', 'alice@a.test'],
            ['to', rcpts.join(', ')],
            ['message-id', `urn:uuid:${uuid}`],
          ]),
        });
        assert.equal(q.code, 0, q.stderr);
        for (const r of rcpts) expected.set(r, [...(expected.get(r) ?? []), uuid]);
        const run = await killedRun(l.env, Math.floor(Math.random() * longest * 1.2));
        if (run.killed) kills++;
        else longest = Math.max(longest, run.log.length);
      }
    }),
  );
  // Everything left is delivered by runs nobody interrupts.
  for (const l of lanes) {
    for (let i = 0; i < 3; i++) {
      const r = await runBin('run-queue', ['--once'], { env: l.env });
      assert.equal(r.code, 0, r.stderr);
    }
    const left = await runBin('list-queue', ['--json'], { env: l.env });
    assert.equal(left.stdout.toString(), '', `lane ${l.dir} still holds: ${left.stdout}`);
  }
  assert.ok(trials >= TRIALS / 4, `only ${trials} of ${TRIALS} trials ran within ${BUDGET_MS} ms`);
  assert.ok(kills >= trials / 4, `only ${kills} of ${trials} runs were killed`);
  if (trials < TRIALS) process.stderr.write(`run-queue-kill: ${trials} of ${TRIALS} trials within the ${BUDGET_MS} ms budget (a loaded machine)\n`);
  for (const [address, ids] of expected) {
    const [user, domain] = address.split('@');
    const got = stored(domain, user);
    assert.equal(got.length, new Set(got).size, `${address}: a message stored twice`);
    assert.deepEqual(got.sort(), [...ids].sort(), `${address}: lost or unexpected messages`);
  }
});
