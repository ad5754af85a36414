// Running stages (stage.ts) inside a real server-receive: the fault barrier
// of in-process runs, timeouts, and the process group of spawned ones.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ROOT, processGoneSoon, tempDir, testEnv } from './helpers.js';
import { type Server, basicFields, config, connect, deliver, message, startServer } from './imdp-fixture.js';

const servers: Server[] = [];
after(async () => Promise.all(servers.map((s) => s.stop())));

const dir = tempDir();
const boxes = join(dir, 'mail');
for (const u of ['bob', 'eio']) for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(boxes, u, f), { recursive: true });
const pidFile = (name: string) => join(dir, `${name}.pid`);

const him = join(dir, 'handle-incoming-mail.toml');
writeFileSync(
  him,
  `command_timeout = "3s"
[domains."b.test"]
command = ["give-recipient", "--address", "{address}", ${JSON.stringify(join(boxes, '{local}'))}]
users = ["bob", "eio"]
[routes]
"timer@b.test" = ["mime-to-ima", "timer", "{address}"]
"leak@b.test" = ["mime-to-ima", "leak", "{address}"]
"hang@b.test" = ["mime-to-ima", "hang", "{address}"]
"wait1@b.test" = ["mime-to-ima", "wait", "{address}", ${JSON.stringify(join(dir, 'go-1'))}]
"wait2@b.test" = ["mime-to-ima", "wait", "{address}", ${JSON.stringify(join(dir, 'go-2'))}]
"orphan@b.test" = ["sh", "-c", ${JSON.stringify(`sleep 60 & echo $! > ${pidFile('orphan')}; cat > /dev/null; echo "OK $0"`)}]
"stuck@b.test" = ["sh", "-c", ${JSON.stringify(`sleep 60 & echo $! > ${pidFile('stuck')}; cat > /dev/null; wait`)}]
`,
);

/** server-receive through faulty.js: mime-to-ima is the broken test program, fsync under eio/ fails with EIO. */
async function faultyServer(extra = ''): Promise<Server> {
  const env = testEnv({ IMA_FAULT_PROGRAM: `mime-to-ima=${join(ROOT, 'dist/test/faulty-program.js')}`, IMA_FAULT_EIO: `${boxes}/eio/` });
  const s = await startServer(config({ handler: ['handle-incoming-mail', '--config', him], extra }), {
    env,
    launcher: [process.execPath, join(ROOT, 'dist/test/faulty.js')],
  });
  servers.push(s);
  return s;
}

const to = (address: string, body = 'Hello.\n') =>
  message(
    basicFields().map(([k, v]): [string, string] => [k, k === 'to' ? address : v]),
    body,
  );
const stored = (user: string) => readdirSync(join(boxes, user, 'new')).length;

test('stage: an in-process program that throws from a timer or leaks a rejection ends TEMPFAIL for that message; the server goes on', async () => {
  const s = await faultyServer();
  const c = await connect(s.port);
  const before = stored('bob');
  // The first fault is not traced: it ends every run in flight, here the message's handle-incoming-mail and mime-to-ima.
  const first = await deliver(c, await to('timer@b.test'));
  assert.equal(first.result?.word, 'TEMPFAIL', `first: ${JSON.stringify(first)}\n${s.stderr()}`);
  await s.waitLog(
    /mime-to-ima: internal error, run ended TEMPFAIL \(one of 2 in-process runs in flight when it was raised, not traced; later faults are traced to their run\): thrown in a timer/,
  );
  assert.equal((await deliver(c, await to('bob@b.test'))).result?.word, 'OK', `after the first fault: ${s.stderr()}`);
  // From then on each fault is traced to its run, which alone ends, and says for which recipient.
  for (const mode of ['timer', 'leak']) {
    const bad = await deliver(c, await to(`${mode}@b.test`));
    assert.equal(bad.result?.word, 'TEMPFAIL', `${mode}: ${JSON.stringify(bad)}\n${s.stderr()}`);
    assert.match(bad.result!.replies.join('\n'), new RegExp(`^TEMPFAIL ${mode}@b\\.test 4\\.3\\.0`, 'm'));
    const good = await deliver(c, await to('bob@b.test'));
    assert.equal(good.result?.word, 'OK', `after ${mode}: ${s.stderr()}`);
  }
  await c.done();
  assert.equal(stored('bob'), before + 3);
  await s.waitLog(/mime-to-ima: internal error, run ended TEMPFAIL: thrown in a timer/);
  await s.waitLog(/mime-to-ima: internal error, run ended TEMPFAIL: a rejection nobody handled/);
  assert.equal(s.proc.exitCode, null, 'server-receive is still running');
});

test('stage: the first stray fault ends every in-process run in flight TEMPFAIL; a later one ends only its own run', async () => {
  const s = await faultyServer();
  const [held, faulty] = [await connect(s.port), await connect(s.port)];
  // Untraced: a message in flight beside the fault cannot be told apart from the one that raised it, so it ends TEMPFAIL too (its sender retries).
  const waiting = deliver(held, await to('wait1@b.test'));
  await s.waitLog(/mime-to-ima: waiting for .*go-1/);
  assert.equal((await deliver(faulty, await to('timer@b.test'))).result?.word, 'TEMPFAIL');
  assert.equal((await waiting).result?.word, 'TEMPFAIL', 'the message in flight beside the first fault');
  await s.waitLog(
    /mime-to-ima: internal error, run ended TEMPFAIL \(one of 4 in-process runs in flight when it was raised, not traced; later faults are traced to their run\): thrown in a timer/,
  );
  writeFileSync(join(dir, 'go-1'), '');
  // Traced: the same fault ends only its own message; the one beside it goes on to its OK.
  const waiting2 = deliver(held, await to('wait2@b.test'));
  await s.waitLog(/mime-to-ima: waiting for .*go-2/);
  const bad = await deliver(faulty, await to('timer@b.test'));
  assert.equal(bad.result?.word, 'TEMPFAIL', JSON.stringify(bad));
  assert.match(bad.result!.replies.join('\n'), /^TEMPFAIL timer@b\.test 4\.3\.0/m);
  writeFileSync(join(dir, 'go-2'), '');
  const ok = await waiting2;
  assert.equal(ok.result?.word, 'OK', `${JSON.stringify(ok)}\n${s.stderr()}`);
  assert.match(ok.result!.replies.join('\n'), /^OK wait2@b\.test/m);
  await Promise.all([held.done(), faulty.done()]);
  assert.equal(s.proc.exitCode, null, 'server-receive is still running');
});

test('stage: EIO on fsync inside give-recipient run in-process: TEMPFAIL for that message, nothing in new/, the next one stored', async () => {
  const s = await faultyServer();
  const c = await connect(s.port);
  const before = stored('bob');
  // Several entries: the headers' fsync fails while the body is still being written.
  const bad = await deliver(c, await to('eio@b.test', 'x'.repeat(300_000)));
  assert.equal(bad.result?.word, 'TEMPFAIL', `${JSON.stringify(bad)}\n${s.stderr()}`);
  assert.match(bad.result!.replies.join('\n'), /^TEMPFAIL eio@b\.test 4\.3\.0 .*EIO \(fsync\)/m);
  assert.equal(stored('eio'), 0);
  assert.deepEqual(readdirSync(join(boxes, 'eio', 'tmp')), [], 'the half-made message is removed');
  assert.equal((await deliver(c, await to('bob@b.test'))).result?.word, 'OK', s.stderr());
  await c.done();
  assert.equal(stored('bob'), before + 1);
  assert.equal(s.proc.exitCode, null, 'server-receive is still running');
});

test('stage: an in-process run that ignores io.signal is ended at the handler timeout (TEMPFAIL); the next message is stored', async () => {
  const s = await faultyServer('[timeouts]\nhandler = "1s"\n');
  const c = await connect(s.port);
  const started = Date.now();
  const r = await deliver(c, await to('hang@b.test'));
  assert.equal(r.result?.word, 'TEMPFAIL', JSON.stringify(r));
  assert.ok(Date.now() - started < 10_000, 'ended at the timeout, not later');
  // The abort reaches through the in-process handle-incoming-mail to the command it spawned, before that command's own timeout (3s).
  const stuck = await deliver(c, await to('stuck@b.test'));
  assert.equal(stuck.result?.word, 'TEMPFAIL', JSON.stringify(stuck));
  // Within a second: its own timeout (3 s) would be too late.
  assert.ok(await processGoneSoon(pidFile('stuck'), 1000), 'the route command and its child are killed at the handler timeout');
  assert.equal((await deliver(c, await to('bob@b.test'))).result?.word, 'OK', s.stderr());
  await c.done();
});

test('stage: a spawned handler that times out is TEMPFAIL, and what it started is killed with it (its process group)', async () => {
  const script = `sleep 60 & echo $! > ${pidFile('handler')}; cat > /dev/null; wait`;
  const s = await startServer(config({ handler: ['sh', '-c', script], extra: '[timeouts]\nhandler = "1s"\n' }));
  servers.push(s);
  const c = await connect(s.port);
  const r = await deliver(c, await to('bob@b.test'));
  assert.equal(r.result?.word, 'TEMPFAIL', JSON.stringify(r));
  await c.done();
  assert.ok(await processGoneSoon(pidFile('handler')), 'the grandchild is killed');
});

test('stage: a route command leaving a child that holds its pipes: OK when it said so, TEMPFAIL at its timeout; the children are killed', async () => {
  const s = await faultyServer();
  const c = await connect(s.port);
  const ok = await deliver(c, await to('orphan@b.test'));
  assert.equal(ok.result?.word, 'OK', JSON.stringify(ok));
  const stuck = await deliver(c, await to('stuck@b.test'));
  assert.equal(stuck.result?.word, 'TEMPFAIL', JSON.stringify(stuck));
  await c.done();
  for (const name of ['orphan', 'stuck']) {
    assert.ok(existsSync(pidFile(name)));
    assert.ok(await processGoneSoon(pidFile(name)), `${name}'s child is killed`);
  }
});

test('run: a program process whose answer never comes (nothing left to wait on) exits 75 with a line, never 0', async () => {
  const { spawnSync } = await import('node:child_process');
  const env = testEnv({ IMA_FAULT_PROGRAM: `mime-to-ima=${join(ROOT, 'dist/test/faulty-program.js')}` });
  const r = spawnSync(process.execPath, [join(ROOT, 'dist/test/faulty.js'), 'mime-to-ima', 'hang', 'x@b.test'], { env, input: '', timeout: 20_000 });
  assert.equal(r.status, 75, String(r.stderr));
  assert.match(String(r.stderr), /^mime-to-ima: internal error: the program stopped without an answer/m);
  assert.equal(String(r.stdout), '', 'no OK line');
});
