// Fixtures for the queue's tests: a queue directory with the three programs'
// configs, a delivery stage that answers on demand, and list-queue --json read back.
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runBin, tempDir, testEnv } from './helpers.js';

/**
 * A delivery stage: saves each message it is given to OUT/<time-pid>.ima with
 * the recipients in OUT/<time-pid>.rcpt, then, per recipient, answers what the file
 * OUT/answers.json says for its domain ("OK", "FAIL", "TEMPFAIL", "SILENT")
 * or runs send-mail with the remaining recipients (a real IMDP delivery).
 */
export function writeStage(dir: string): string {
  const file = join(dir, 'stage.mjs');
  writeFileSync(
    file,
    `import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
const [out, sendMailConfig, ...args] = process.argv.slice(2);
const rcpts = [];
for (let i = 0; i < args.length; i++) if (args[i] === '--recipient') rcpts.push(args[++i]);
const chunks = [];
for await (const c of process.stdin) chunks.push(c);
// Stage runs of one message's domains go at once: a name of its own for each.
const n = Date.now() + '-' + process.pid;
writeFileSync(out + '/' + n + '.rcpt', rcpts.join('\\n') + '\\n');
writeFileSync(out + '/' + n + '.ima', Buffer.concat(chunks));
const answers = existsSync(out + '/answers.json') ? JSON.parse(readFileSync(out + '/answers.json', 'utf8')) : {};
const rest = [];
for (const r of rcpts) {
  const a = answers[r.split('@')[1]];
  if (a === 'OK') console.log('OK ' + r);
  else if (a === 'FAIL') console.log('FAIL ' + r + ' 5.1.1 no such user here');
  else if (a === 'TEMPFAIL') console.log('TEMPFAIL ' + r + ' 4.2.1 try later');
  else if (a !== 'SILENT') rest.push(r);
}
if (rest.length) {
  const child = spawn('send-mail', ['--config', sendMailConfig, ...rest.flatMap((r) => ['--recipient', r])], { stdio: ['pipe', 'inherit', 'inherit'] });
  child.stdin.end(Buffer.concat(chunks));
  child.on('close', (code) => process.exit(code ?? 75));
} else process.exit(75);
`,
  );
  return file;
}

export interface QueueSetup {
  dir: string;
  /** Where the stage saves what it is given, and reads answers.json. */
  out: string;
  env: Record<string, string | undefined>;
  answer(answers: Record<string, string>): void;
  /** Messages the stage was given, with their recipients. */
  given(): { n: string; rcpts: string[]; ima: Buffer }[];
}

/** A queue directory and configs for queue-mail, run-queue and list-queue (in IMA_CONFIG_DIR); `direct`: send-mail itself (in-process) is the stage. */
export function queueSetup(opts: { sendMailConfig: string; runQueue?: string; direct?: boolean }): QueueSetup {
  const dir = tempDir('ima-queue-');
  const out = join(dir, 'out');
  const stage = writeStage(dir);
  writeFileSync(join(dir, 'queue-mail.toml'), `queue_dir = "queue"\n`);
  writeFileSync(join(dir, 'list-queue.toml'), `queue_dir = "queue"\n`);
  writeFileSync(
    join(dir, 'run-queue.toml'),
    `queue_dir = "queue"
command = ${JSON.stringify(opts.direct ? ['send-mail', '--config', opts.sendMailConfig] : ['node', stage, out, opts.sendMailConfig])}
notice_command = ["queue-mail"]
${opts.runQueue ?? ''}
`,
  );
  mkdirSync(out);
  const setup: QueueSetup = {
    dir,
    out,
    env: testEnv({ IMA_CONFIG_DIR: dir }),
    answer: (a) => writeFileSync(join(out, 'answers.json'), JSON.stringify(a)),
    given: () =>
      readdirSync(out)
        .filter((f) => f.endsWith('.ima'))
        .map((f) => f.slice(0, -4))
        .sort()
        .map((n) => ({
          n,
          rcpts: readFileSync(join(out, `${n}.rcpt`), 'utf8')
            .trim()
            .split('\n'),
          ima: readFileSync(join(out, `${n}.ima`)),
        })),
  };
  return setup;
}

export interface Listed {
  queue_id: string;
  arrival: string;
  size: number;
  sender: string;
  held: boolean;
  notice: string;
  recipients: { address: string; state: string; attempts: number; next_attempt: string; last_reply: string }[];
}

/** list-queue --json, parsed line by line. */
export async function listQueue(env: Record<string, string | undefined>): Promise<Listed[]> {
  const r = await runBin('list-queue', ['--json'], { env });
  if (r.code !== 0) throw new Error(`list-queue exited ${r.code}: ${r.stderr}`);
  const text = r.stdout.toString();
  return text === ''
    ? []
    : text
        .trimEnd()
        .split('\n')
        .map((l) => JSON.parse(l) as Listed);
}

/** A recipient's entry in a listing. */
export function recipient(list: Listed[], address: string) {
  for (const m of list) for (const r of m.recipients) if (r.address === address) return { ...r, queue_id: m.queue_id };
  return undefined;
}
