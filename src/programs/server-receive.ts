// server-receive: the IMDP server (ima(7)). Mutual TLS; the sending
// domain proven by the client certificate; each accepted message piped to
// the handler command, its output relayed, its exit code the final status.
//
// It does not route, store or look at recipients itself (the handler and the
// optional check command do), never relays, never keeps a message on disk,
// and never says OK unless the handler did.
import type { Argv } from 'yargs';
import { start } from '../cli.js';
import { type Located, boolean, command, duration, integer, list, loadConfig, optional, size, string, table } from '../config.js';
import { EXIT, configError, usageError } from '../failure.js';
import { ImdpSession, type SessionConfig, type SessionObserver } from '../imdp/server.js';
import * as wire from '../imdp/wire.js';
import { type Settings, listenProblem, parseHostPort, serve, whereFrom } from '../net/listen.js';
import type { Log } from '../log.js';
import type { Io } from '../io.js';
import { contextOptions, tlsFromConfig, tlsSchema } from '../net/tls.js';
import { Registry, connectionMetrics, metricsAddressProblem, serveMetrics } from '../net/metrics.js';
import { asciiDomain, domainProblem } from '../address.js';
import { DEFAULT_LIMITS } from '../message/index.js';
import { leaveCluster, listenPid, runWorkers, supervises } from '../net/workers.js';
import { dropAfterBinding, lookUpUser } from '../privileges.js';
import { commandProblem } from '../stage.js';

const schema = table({
  domain: string({ check: domainProblem }),
  listen: optional(string({ check: listenProblem }), `[::]:${wire.IMDP_PORT}`),
  metrics: optional(string({ check: metricsAddressProblem }), undefined as string | undefined),
  handler: optional(command(), ['handle-incoming-mail']),
  check: optional(list(string({ nonEmpty: true })), [] as string[]),
  in_process: optional(boolean(), true),
  user: optional(string(), ''),
  workers: optional(integer({ min: 1, max: 256 }), 1),
  tls: tlsSchema(),
  limits: table({
    max_message_bytes: optional(size({ min: 1024 }), 100 * 1024 * 1024),
    max_header_bytes: optional(size({ min: 256, max: 1024 * 1024 }), 64 * 1024),
    max_entries: optional(integer({ min: 1 }), DEFAULT_LIMITS.maxEntries),
    max_line: optional(integer({ min: 80, max: 65536 }), wire.MAX_LINE),
    max_connections: optional(integer({ min: 1 }), 100),
    max_connections_per_address: optional(integer({ min: 1 }), 10),
    max_messages_per_connection: optional(integer({ min: 1 }), 1000),
    max_hops: optional(integer({ min: 1, max: 1000 }), 30),
    max_errors: optional(integer({ min: 0 }), 10),
    min_data_rate: optional(size({ min: 0 }), 1024),
  }),
  timeouts: table({
    handshake: optional(duration(), 10_000),
    first_message: optional(duration(), 30_000),
    idle: optional(duration(), 300_000),
    command: optional(duration(), 60_000),
    data: optional(duration(), 120_000),
    handler: optional(duration(), 600_000),
    shutdown: optional(duration(), 60_000),
  }),
});
type Config = ReturnType<typeof schema.parse>;

const options = (y: Argv) =>
  y
    .option('listen', { alias: 'l', type: 'string', describe: 'Listen on ADDRESS:PORT (default: listen in the config)', requiresArg: true })
    .option('inetd', { type: 'boolean', describe: 'Serve the one connection on stdin/stdout (inetd, systemd Accept=yes)' });

function settingsOf(config: Config, source: Located): Settings {
  const material = tlsFromConfig(config.tls, source, 'server-receive', config.domain);
  const { limits, timeouts } = config;
  return {
    tls: contextOptions(material),
    clientCert: 'required',
    limits: {
      maxConnections: limits.max_connections,
      maxPerAddress: limits.max_connections_per_address,
      handshakeTimeout: timeouts.handshake,
      shutdownTimeout: timeouts.shutdown,
    },
  };
}

/** The server's metrics (server-receive(1) METRICS): connections, messages and bytes by result, handler durations. */
function metricsOf(r: Registry): { observe: SessionObserver; connection: (event: string) => void } {
  const messages = r.counter('ima_messages_total', 'Messages whose data was read, by final status (OK, FAIL, PARTIAL, TEMPFAIL, drop).');
  const bytes = r.counter('ima_message_bytes_total', 'Bytes of those messages, by final status.');
  const rejected = r.counter('ima_mail_rejected_total', 'MAIL commands answered REJECT, by status.');
  const handler = r.histogram('ima_handler_duration_seconds', 'Time the handler took per message, by its final status.');
  return {
    observe: {
      message: (result, n) => {
        messages.inc({ result });
        bytes.inc({ result }, n);
      },
      rejected: (status) => rejected.inc({ status }),
      handler: (seconds, result) => handler.observe({ result }, seconds),
    },
    connection: connectionMetrics(r).observe,
  };
}

function sessionOf(config: Config, io: Io, log: Log, observe?: SessionObserver): SessionConfig {
  const { limits, timeouts } = config;
  return {
    domain: asciiDomain(config.domain),
    limits: {
      maxMessageSize: limits.max_message_bytes,
      maxHeaderBytes: limits.max_header_bytes,
      maxEntries: limits.max_entries,
      maxLine: limits.max_line,
      maxMessages: limits.max_messages_per_connection,
      maxHops: limits.max_hops,
      maxErrors: limits.max_errors,
      minDataRate: limits.min_data_rate,
    },
    timeouts: { idle: timeouts.idle, firstMessage: timeouts.first_message, command: timeouts.command, data: timeouts.data, handler: timeouts.handler },
    handler: [...config.handler],
    check: [...config.check],
    inProcess: config.in_process,
    // A plain copy, made once: each message's handler gets it spread with its
    // own variables, and spreading process.env itself costs a call into the
    // runtime per variable.
    env: { ...io.env },
    cwd: io.cwd,
    log,
    stderr: io.stderr,
    observe,
  };
}

/** Everything a start checks, for --check-config too: the file, the certificates, the commands. */
function check(config: Config, source: Located, io: Io): Settings {
  if (!source.file) throw configError(source.dir, '', 'server-receive needs a config file (domain, tls.certificate, tls.key): see server-receive.toml(5)');
  for (const key of ['handler', 'check'] as const) {
    const problem = config[key].length ? commandProblem(config[key], io.env, io.cwd) : undefined;
    if (problem) throw configError(source.file, key, problem);
  }
  if (config.user) lookUpUser(config.user, source.file);
  if (config.workers > 1 && config.metrics !== undefined)
    throw configError(source.file, 'workers', 'more than one worker and metrics exclude each other: each worker counts only its own connections and messages');
  return settingsOf(config, source);
}

export async function main(args: string[], io: Io): Promise<number> {
  try {
    return await serveConfigured(args, io);
  } finally {
    leaveCluster(); // a worker's server is over: its process may exit
  }
}

async function serveConfigured(args: string[], io: Io): Promise<number> {
  const s = await start(
    { name: 'server-receive', role: 'server', notAsRoot: true, usage: '$0 [--listen ADDRESS:PORT | --inetd] [options]', schema, options, check },
    args,
    io,
  );
  if (typeof s === 'number') return s;
  const { argv, log, source } = s;
  let config = s.config;
  let settings = s.prepared;
  const where = whereFrom(argv.listen, argv.inetd, io.env, { stdin: io.stdin, stdout: io.stdout }, listenPid()) ?? {
    mode: 'listen' as const,
    ...parseHostPort(config.listen),
  };
  if (where.mode === 'inetd' && argv.listen) throw usageError('--inetd and --listen exclude each other');
  if (supervises(config.workers, where, io))
    return runWorkers(config.workers, { log, signals: io.signals!, onListening: dropAfterBinding(config.user, source.file!, log) });
  const registry = config.metrics === undefined ? undefined : new Registry();
  const metrics = registry && metricsOf(registry);
  let session = sessionOf(config, io, log, metrics?.observe);
  // One connection under inetd has nothing worth scraping.
  const endpoint = registry && where.mode !== 'inetd' ? await serveMetrics(config.metrics!, registry, log, source.file!) : undefined;
  try {
    const drop = dropAfterBinding(config.user, source.file!, log);
    if (where.mode !== 'listen') drop(); // the socket is inherited: nothing to bind
    await serve(
      where,
      settings,
      {
        session: (socket, peer, stopping) => new ImdpSession(socket, peer, session).run(stopping),
        refuse: (socket, reason) => socket.write(wire.bye(reason)),
        reload: async () => {
          const next = loadConfig(schema, source.file!, true).config;
          settings = check(next, source, io);
          config = next;
          session = sessionOf(config, io, log, metrics?.observe);
          return settings;
        },
      },
      { log, signals: io.signals, signal: io.signal, observe: metrics?.connection, onListening: drop },
    );
  } finally {
    await endpoint?.close();
  }
  return EXIT.OK;
}
