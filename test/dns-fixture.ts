// A real DNS server for tests: dnsmasq (Debian dnsmasq-base) in the
// foreground on 127.0.0.1 and a free high port, answering only what a test
// gives it (no upstream, no /etc/hosts), authoritative NXDOMAIN for
// everything else under .test. Point a program at it with
// `dns_servers = ["127.0.0.1:PORT"]` (see `server`).
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { createSocket } from 'node:dgram';

export const DNSMASQ = ['/usr/sbin/dnsmasq', '/usr/bin/dnsmasq'].find((p) => existsSync(p));

export interface Zone {
  /** MX records: [domain, exchange, preference]; exchange "." makes a null MX (RFC 7505). */
  mx?: [string, string, number][];
  /** SRV records: [owner such as "_imdp._tcp.b.test", target, port, priority, weight]; a target of "." says "no such service". */
  srv?: [string, string, number, number, number][];
  /** A/AAAA: [name, address...]. */
  hosts?: [string, ...string[]][];
  /** TXT: [name, text] (no commas); long texts are split into 255-byte strings. */
  txt?: [string, string][];
}

export interface DnsServer {
  port: number;
  /** The value for a config's dns_servers. */
  server: string;
  stop(): Promise<void>;
}

/** A free UDP port on 127.0.0.1 (dnsmasq also needs TCP on it; a clash is retried). */
async function freeUdpPort(): Promise<number> {
  const s = createSocket('udp4');
  s.bind(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address();
  await new Promise<void>((res) => s.close(() => res()));
  return port;
}

function txtArg(name: string, text: string): string {
  const parts: string[] = [];
  // Unquoted on the command line (dnsmasq takes quotes literally there); each comma starts a new string.
  if (text.includes(',')) throw new Error(`TXT text with a comma cannot be given to dnsmasq: ${text}`);
  for (let i = 0; i < text.length; i += 255) parts.push(text.slice(i, i + 255));
  return `--txt-record=${name},${parts.join(',')}`;
}

export function zoneArgs(z: Zone): string[] {
  const args: string[] = [];
  for (const [d, ex, pref] of z.mx ?? []) args.push(`--mx-host=${d},${ex},${pref}`);
  for (const [owner, target, port, prio, weight] of z.srv ?? [])
    args.push(target === '.' ? `--srv-host=${owner}` : `--srv-host=${owner},${target},${port},${prio},${weight}`);
  for (const [name, ...addrs] of z.hosts ?? []) args.push(`--host-record=${name},${addrs.join(',')}`);
  for (const [name, text] of z.txt ?? []) args.push(txtArg(name, text));
  return args;
}

async function startOn(port: number, z: Zone): Promise<{ proc: ChildProcess; ok: boolean; log: string }> {
  const proc = spawn(
    DNSMASQ!,
    [
      '--keep-in-foreground',
      '--log-facility=-',
      '--conf-file=/dev/null',
      '--pid-file=',
      '--no-resolv',
      '--no-hosts',
      '--no-poll',
      '--listen-address=127.0.0.1',
      '--bind-interfaces',
      `--port=${port}`,
      '--local=/test/',
      '--cache-size=0',
      ...zoneArgs(z),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let log = '';
  const ok = await new Promise<boolean>((res) => {
    const timer = setTimeout(() => res(false), 10_000);
    proc.stderr!.on('data', (d: Buffer) => {
      log += d;
      // dnsmasq binds its sockets before it says "started".
      if (/started, version/.test(log)) {
        clearTimeout(timer);
        res(true);
      }
    });
    proc.once('exit', () => {
      clearTimeout(timer);
      res(false);
    });
    proc.once('error', () => res(false));
  });
  return { proc, ok, log };
}

/** Start dnsmasq answering `zone`; throws with dnsmasq's own words when it cannot start. */
export async function startDns(zone: Zone): Promise<DnsServer> {
  if (!DNSMASQ) throw new Error('dnsmasq not installed (Debian: dnsmasq-base)');
  let last = '';
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freeUdpPort();
    const { proc, ok, log } = await startOn(port, zone);
    if (ok) {
      return {
        port,
        server: `127.0.0.1:${port}`,
        async stop() {
          if (proc.exitCode !== null || proc.signalCode !== null) return;
          proc.kill('SIGTERM');
          await once(proc, 'exit');
        },
      };
    }
    proc.kill('SIGKILL');
    last = log;
    if (!/in use/i.test(log)) break;
  }
  throw new Error(`dnsmasq did not start: ${last.trim()}`);
}
