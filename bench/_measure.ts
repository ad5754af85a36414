// Shared bench plumbing: run a command, poll its peak RSS (VmHWM) from /proc.
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

export interface Measured {
  code: number | null;
  seconds: number;
  peakRssMb: number;
  stderr: string;
}

function hwmKb(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** Run argv with stdout to a file descriptor or ignored; report wall time and peak RSS. */
export function measure(argv: string[], opts: { stdout?: number | 'ignore' | 'inherit'; stdin?: number | 'ignore'; env?: NodeJS.ProcessEnv } = {}): Promise<Measured> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(argv[0], argv.slice(1), { stdio: [opts.stdin ?? 'ignore', opts.stdout ?? 'ignore', 'pipe'], env: opts.env ?? process.env });
    let peak = 0;
    let stderr = '';
    child.stderr!.on('data', (c) => (stderr += c));
    const timer = setInterval(() => (peak = Math.max(peak, hwmKb(child.pid!))), 20);
    child.on('error', reject);
    child.on('exit', (code) => {
      clearInterval(timer);
      resolve({ code, seconds: Number(process.hrtime.bigint() - t0) / 1e9, peakRssMb: peak / 1024, stderr });
    });
  });
}

export const mb = (bytes: number) => bytes / (1024 * 1024);

/** Median wall time of running argv, in ms (start-up cost of a program). */
export function startupMs(argv: string[], runs = 10): number {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    spawnSync(argv[0], argv.slice(1), { stdio: 'ignore' });
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return times.sort((a, b) => a - b)[Math.floor(runs / 2)];
}
