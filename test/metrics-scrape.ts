// Test helpers for operators' features: start a server whose log is JSON
// (startListening looks for a text line), and scrape its metrics endpoint.
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { get } from 'node:http';
import { join } from 'node:path';
import { BIN, testEnv } from './helpers.js';

export interface JsonServer {
  proc: ChildProcess;
  port: number;
  metricsPort: number;
  /** Every stderr line so far, each parsed as JSON (a line that is not JSON throws). */
  records(): Record<string, string>[];
  stop(): Promise<void>;
}

/** Start bin/NAME with --log-format json, and wait for its "listening on" and "metrics on" records (events, with a deadline). */
export async function startJsonServer(name: string, args: string[], deadline = 20_000): Promise<JsonServer> {
  const proc = spawn(join(BIN, name), [...args, '--log-format', 'json'], { env: testEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
  let text = '';
  const records = () =>
    text
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as Record<string, string>);
  const ports = await new Promise<{ port: number; metricsPort: number }>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`${name} did not start within ${deadline} ms: ${text}`)), deadline);
    const seen = () => {
      const port = /"msg":"listening on [^"]*:(\d+)"/.exec(text)?.[1];
      const metricsPort = /"msg":"metrics on http:\/\/[^"]*:(\d+)\/metrics"/.exec(text)?.[1];
      if (port && metricsPort) {
        clearTimeout(timer);
        proc.stderr!.off('data', seen);
        res({ port: Number(port), metricsPort: Number(metricsPort) });
      }
    };
    proc.stderr!.on('data', (d: Buffer) => (text += d));
    proc.stderr!.on('data', seen);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      rej(new Error(`${name} exited ${code}: ${text}`));
    });
  });
  return {
    proc,
    ...ports,
    records,
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      await once(proc, 'exit');
    },
  };
}

/** GET /metrics and read the samples: "name{labels}" -> value. */
export function scrape(port: number): Promise<Map<string, number>> {
  return new Promise((res, rej) => {
    const req = get({ host: '127.0.0.1', port, path: '/metrics', timeout: 5000 }, (r) => {
      let body = '';
      r.on('data', (d) => (body += d));
      r.on('error', rej);
      r.on('end', () => {
        const samples = new Map<string, number>();
        for (const line of body.split('\n')) {
          const m = /^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$/.exec(line);
          if (m) samples.set(m[1], Number(m[2]));
        }
        res(samples);
      });
    });
    req.on('error', rej);
    req.on('timeout', () => req.destroy(new Error('no metrics within 5 s')));
  });
}
