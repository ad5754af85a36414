// What every bench module shares: the run's options (--quick), one fresh
// directory per measurement, the same environment for every spawned process,
// a PKI, and the closing table (measure, figure, peer, ratio, target).
import { randomUUID } from 'node:crypto';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeCa, makeLeaf } from '../src/cert.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const BIN = join(ROOT, 'bin');

/**
 * The receivers' `workers` in the benchmarks: one per core, as Postfix runs
 * an smtpd process per client (IMA_BENCH_WORKERS=1 measures one process).
 */
export const WORKERS = Math.max(1, Number(process.env.IMA_BENCH_WORKERS) || availableParallelism());

/** A receiver started with startListening, once every worker serves (the first one's "listening on" is not all of them). */
export async function serving<T extends { waitLog(re: RegExp): Promise<void> }>(server: T): Promise<T> {
  if (WORKERS > 1) await server.waitLog(/\d+ workers serving/);
  return server;
}

export interface Row {
  measure: string;
  figure: string;
  peer: string;
  ratio: string;
  target: string;
}

export interface Pki {
  caFile: string;
  /** Server b.test (receives, serves mailboxes). */
  b: { cert: string; key: string };
  /** Client a.test (sends; its certificate carries clientAuth). */
  a: { cert: string; key: string };
}

export class Bench {
  readonly rows: Row[] = [];
  /**
   * The one environment of every spawned process. NODE_EXTRA_CA_CERTS and
   * NODE_OPTIONS are removed for all (the programs get their CAs from config).
   */
  readonly env: NodeJS.ProcessEnv;
  private pkiMade?: Pki;
  private readonly t0 = performance.now();

  constructor(
    readonly quick: boolean,
    /** Root of this run's fresh directories; deleted at the very end. */
    readonly root: string,
  ) {
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${BIN}:${process.env.PATH}`, IMA_CONFIG_DIR: '/nonexistent', IMA_ALLOW_ROOT: '1' };
    delete env.NODE_EXTRA_CA_CERTS;
    delete env.NODE_OPTIONS;
    this.env = env;
  }

  /** A fresh directory for one measurement (never reused: ext4 creates files slowly near recent deletions). */
  fresh(label: string): string {
    const d = join(this.root, `${label}-${randomUUID().slice(0, 8)}`);
    mkdirSync(d, { recursive: true });
    chmodSync(d, 0o755); // Postfix and Dovecot processes run as their own users
    return d;
  }

  /** n in a full run, a fifth (at least `min`) with --quick. */
  n(full: number, min = 1): number {
    return this.quick ? Math.max(min, Math.round(full / 5)) : full;
  }

  pki(): Pki {
    if (this.pkiMade) return this.pkiMade;
    const dir = this.fresh('pki');
    const ca = makeCa('bench CA', 'bench', { days: 2 }, 2048);
    const save = (name: string, domain: string) => {
      const leaf = makeLeaf(ca, { purpose: 'server', commonName: domain, dnsNames: [domain], organization: 'bench' }, { days: 2 });
      writeFileSync(join(dir, `${name}.crt`), leaf.certPem);
      writeFileSync(join(dir, `${name}.key`), leaf.keyPem, { mode: 0o644 });
      return { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
    };
    writeFileSync(join(dir, 'ca.crt'), ca.certPem);
    this.pkiMade = { caFile: join(dir, 'ca.crt'), a: save('a', 'a.test'), b: save('b', 'b.test') };
    return this.pkiMade;
  }

  /** One line of the closing table; the ratio is figure/peer, `target` the goal in words. */
  row(measure: string, figure: number, unit: string, peer: { name: string; figure: number } | undefined, target: string): void {
    const fmt = (x: number) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
    const ratio = peer && peer.figure > 0 && figure > 0 ? figure / peer.figure : undefined;
    const r: Row = {
      measure,
      figure: `${fmt(figure)} ${unit}`,
      peer: peer ? `${peer.name}: ${fmt(peer.figure)} ${unit}` : '-',
      ratio: ratio === undefined ? '-' : `${ratio.toFixed(2)}x`,
      target,
    };
    this.rows.push(r);
    console.log(`  [${since(this.t0).toFixed(0)} s] ${r.measure}: ${r.figure}${peer ? ` (${r.peer}, ${r.ratio})` : ''}`);
  }

  table(): string {
    const head: Row = { measure: 'measure', figure: 'figure', peer: 'peer (same run)', ratio: 'ratio', target: 'target' };
    const all = [head, ...this.rows];
    const keys = Object.keys(head) as (keyof Row)[];
    const width = Object.fromEntries(keys.map((k) => [k, Math.max(...all.map((r) => r[k].length))])) as Record<keyof Row, number>;
    const line = (r: Row) => `| ${keys.map((k) => r[k].padEnd(width[k])).join(' | ')} |`;
    return [line(head), `|${keys.map((k) => '-'.repeat(width[k] + 2)).join('|')}|`, ...this.rows.map(line)].join('\n');
  }
}

/** Seconds since t0 (performance.now() milliseconds). */
export const since = (t0: number) => (performance.now() - t0) / 1000;

/** Wait until check() is true, polling; throws after `seconds`. */
export async function until(check: () => boolean, seconds: number, what: string): Promise<void> {
  const deadline = performance.now() + seconds * 1000;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`bench: ${what}: not done within ${seconds} s`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
