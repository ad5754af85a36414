// Metrics for the long-running servers, in the Prometheus text exposition
// format (version 0.0.4): a small registry of counters, gauges and
// histograms with labels, and a plain-HTTP endpoint (GET /metrics) on the
// address the config's `metrics` key names. Off unless configured. No
// dependency: the format is a few lines of text per series.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { configError } from '../failure.js';
import type { Log } from '../log.js';
import { parseHostPort } from './listen.js';

export type Labels = Readonly<Record<string, string>>;

/** Label values escaped as the format asks: backslash, double quote, newline. */
const escapeValue = (v: string) => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');

function labelText(labels: Labels, extra?: [string, string]): string {
  const pairs = Object.entries(labels).sort(([a], [b]) => a.localeCompare(b));
  if (extra) pairs.push(extra);
  return pairs.length ? `{${pairs.map(([k, v]) => `${k}="${escapeValue(v)}"`).join(',')}}` : '';
}

const keyOf = (labels: Labels) => labelText(labels);

/** A number as Prometheus writes it. */
const num = (n: number) => (Number.isFinite(n) ? String(n) : n > 0 ? '+Inf' : n < 0 ? '-Inf' : 'NaN');

interface Metric {
  readonly name: string;
  render(): string[];
}

abstract class Series<V> implements Metric {
  protected readonly series = new Map<string, { labels: Labels; value: V }>();
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: 'counter' | 'gauge' | 'histogram',
  ) {}
  protected slot(labels: Labels, fresh: () => V): { labels: Labels; value: V } {
    const key = keyOf(labels);
    let s = this.series.get(key);
    if (!s) {
      s = { labels: { ...labels }, value: fresh() };
      this.series.set(key, s);
    }
    return s;
  }
  render(): string[] {
    return [`# HELP ${this.name} ${this.help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`, `# TYPE ${this.name} ${this.type}`, ...this.lines()];
  }
  protected abstract lines(): string[];
}

export class Counter extends Series<number> {
  constructor(name: string, help: string) {
    super(name, help, 'counter');
  }
  inc(labels: Labels = {}, by = 1): void {
    if (by < 0) throw new RangeError(`${this.name}: a counter only goes up`);
    this.slot(labels, () => 0).value += by;
  }
  get(labels: Labels = {}): number {
    return this.series.get(keyOf(labels))?.value ?? 0;
  }
  protected lines(): string[] {
    return [...this.series.values()].map((s) => `${this.name}${labelText(s.labels)} ${num(s.value)}`);
  }
}

export class Gauge extends Series<number> {
  constructor(name: string, help: string) {
    super(name, help, 'gauge');
  }
  set(labels: Labels, value: number): void {
    this.slot(labels, () => 0).value = value;
  }
  add(labels: Labels, by: number): void {
    this.slot(labels, () => 0).value += by;
  }
  protected lines(): string[] {
    return [...this.series.values()].map((s) => `${this.name}${labelText(s.labels)} ${num(s.value)}`);
  }
}

interface Buckets {
  counts: number[];
  sum: number;
  count: number;
}

export class Histogram extends Series<Buckets> {
  constructor(
    name: string,
    help: string,
    readonly bounds: readonly number[],
  ) {
    super(name, help, 'histogram');
  }
  observe(labels: Labels, value: number): void {
    const b = this.slot(labels, () => ({ counts: this.bounds.map(() => 0), sum: 0, count: 0 })).value;
    this.bounds.forEach((le, i) => {
      if (value <= le) b.counts[i]++;
    });
    b.sum += value;
    b.count++;
  }
  protected lines(): string[] {
    return [...this.series.values()].flatMap(({ labels, value: b }) => [
      ...this.bounds.map((le, i) => `${this.name}_bucket${labelText(labels, ['le', num(le)])} ${b.counts[i]}`),
      `${this.name}_bucket${labelText(labels, ['le', '+Inf'])} ${b.count}`,
      `${this.name}_sum${labelText(labels)} ${num(b.sum)}`,
      `${this.name}_count${labelText(labels)} ${b.count}`,
    ]);
  }
}

/** Seconds: from a fast in-process handler to the default ten-minute handler timeout. */
export const DURATION_BUCKETS: readonly number[] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600];

export class Registry {
  private readonly metrics = new Map<string, Metric>();

  private add<M extends Metric>(m: M): M {
    if (!/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(m.name)) throw new Error(`bad metric name ${m.name}`);
    if (this.metrics.has(m.name)) throw new Error(`metric ${m.name} registered twice`);
    this.metrics.set(m.name, m);
    return m;
  }
  counter(name: string, help: string): Counter {
    return this.add(new Counter(name, help));
  }
  gauge(name: string, help: string): Gauge {
    return this.add(new Gauge(name, help));
  }
  histogram(name: string, help: string, bounds: readonly number[] = DURATION_BUCKETS): Histogram {
    return this.add(new Histogram(name, help, bounds));
  }
  /** The text exposition of every metric. */
  render(): string {
    return `${[...this.metrics.values()].flatMap((m) => m.render()).join('\n')}\n`;
  }
}

/** The connection metrics every server has, fed by listen.ts's observe hook. */
export function connectionMetrics(r: Registry): { connections: Counter; open: Gauge; observe(event: string): void } {
  const connections = r.counter('ima_connections_total', 'Connections by result: accepted, refused (certificate), limited, handshake_failed.');
  const open = r.gauge('ima_connections_open', 'Sessions open now.');
  open.set({}, 0);
  return {
    connections,
    open,
    observe(event) {
      if (event === 'open') open.add({}, 1);
      else if (event === 'close') open.add({}, -1);
      else connections.inc({ result: event });
    },
  };
}

export interface MetricsServer {
  address: AddressInfo;
  close(): Promise<void>;
}

/** Check a `metrics` config value (ADDRESS:PORT); undefined when it is well-formed. */
export function metricsAddressProblem(s: string): string | undefined {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]*):(\d{1,5})$/.exec(s);
  return m && Number(m[2]) <= 65535 ? undefined : 'must be ADDRESS:PORT, such as 127.0.0.1:9464';
}

/**
 * Serve GET /metrics on plain HTTP at `listen`. A port that cannot be bound
 * is a configuration error naming the file and key (exit 78).
 */
export async function serveMetrics(listen: string, registry: Registry, log: Log, configFile: string): Promise<MetricsServer> {
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if ((req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: GET /metrics\n');
      return;
    }
    const body = registry.render();
    res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8', 'content-length': Buffer.byteLength(body) });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  server.on('clientError', (_e, socket) => socket.destroy());
  server.headersTimeout = 10_000;
  server.requestTimeout = 10_000;
  server.keepAliveTimeout = 5_000;
  const { host, port } = parseHostPort(listen);
  server.listen({ host, port });
  try {
    await new Promise<void>((res, rej) => {
      server.once('listening', res);
      server.once('error', rej);
    });
  } catch (e) {
    throw configError(configFile, 'metrics', `cannot listen on ${listen}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  server.on('error', (e) => log.warn(`metrics: ${e.message}`));
  const address = server.address() as AddressInfo;
  log.info(`metrics on http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}/metrics`);
  return {
    address,
    close: () =>
      new Promise<void>((res) => {
        server.close(() => res());
        server.closeAllConnections();
      }),
  };
}
