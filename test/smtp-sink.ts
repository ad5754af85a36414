// Postfix's smtp-sink as a misbehaving SMTP peer on demand: 4xx or 5xx for
// chosen commands (-r, -f), a dropped connection (-q), on 127.0.0.1 and a
// free port. Ready when it accepts a connection (retried until a deadline).
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { freePort } from './helpers.js';

export const SMTP_SINK = '/usr/sbin/smtp-sink';
export const smtpSinkMissing = existsSync(SMTP_SINK) ? undefined : 'smtp-sink is not installed (Debian: postfix)';

export interface Sink {
  port: number;
  proc: ChildProcess;
  output(): string;
  stop(): Promise<void>;
}

function accepts(port: number): Promise<boolean> {
  return new Promise((res) => {
    const c = connect(port, '127.0.0.1');
    c.once('connect', () => {
      c.destroy();
      res(true);
    });
    c.once('error', () => res(false));
  });
}

/** Start smtp-sink with `flags` (e.g. ['-f', 'rcpt']); it stops when the test calls stop(). */
export async function startSink(flags: string[] = []): Promise<Sink> {
  const port = await freePort();
  const uid = process.getuid?.() === 0 ? ['-u', 'nobody'] : [];
  const proc = spawn(SMTP_SINK, [...uid, '-h', 'sink.test', ...flags, `127.0.0.1:${port}`, '16'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  const deadline = Date.now() + 10_000;
  while (!(await accepts(port))) {
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`smtp-sink did not start: ${out}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    port,
    proc,
    output: () => out,
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      await once(proc, 'exit');
    },
  };
}
