// post-office: the IMRP server (ima(7)). Users log in with a password or a
// client certificate and fetch their mailbox.
//
// It does not deliver mail (give-recipient does), never shows one user's
// mailbox to another, never stores a password (only scrypt hashes), and
// never reads a message id as a path.
import { dropAfterBinding, lookUpUser } from '../privileges.js';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import type { Argv } from 'yargs';
import { start } from '../cli.js';
import { type Located, boolean, configPath, mailboxPathProblem, duration, integer, list, loadConfig, map, optional, size, string, table } from '../config.js';
import { EXIT, configError, usageError } from '../failure.js';
import { IMRP_PORT, MAX_LINE, bye, userNameProblem } from '../imrp/wire.js';
import { ImrpSession, type ImrpConfig } from '../imrp/server.js';
import { type Settings, listenProblem, parseHostPort, serve, whereFrom } from '../net/listen.js';
import type { Log } from '../log.js';
import { dummyHash, hashPassword, hashProblem } from '../password.js';
import { type GuardLimits, LoginGuard } from '../net/login-guard.js';
import { isTerminal, readSecret } from '../prompt.js';
import type { Io } from '../io.js';
import { contextOptions, tlsFromConfig, tlsSchema } from '../net/tls.js';
import { Registry, connectionMetrics, metricsAddressProblem, serveMetrics } from '../net/metrics.js';

const schema = table({
  name: optional(string({ nonEmpty: true }), hostname()),
  listen: optional(string({ check: listenProblem }), `[::]:${IMRP_PORT}`),
  metrics: optional(string({ check: metricsAddressProblem }), undefined as string | undefined),
  user: optional(string(), ''),
  tls: tlsSchema(),
  users: map(
    table({
      mailbox: string({ nonEmpty: true, check: (p) => mailboxPathProblem(p, false) }),
      shared_mailbox: optional(boolean(), false),
      password: optional(string({ check: hashProblem }), undefined as string | undefined),
      certificate_sha256: optional(
        list(
          string({
            check: (s) => (/^[0-9a-f]{64}$/.test(s) ? undefined : 'must be 64 lowercase hex digits (openssl x509 -noout -fingerprint -sha256, colons removed)'),
          }),
        ),
        [] as string[],
      ),
      certificate_name: optional(string({ nonEmpty: true }), undefined as string | undefined),
    }),
    userNameProblem,
  ),
  limits: table({
    max_line: optional(integer({ min: 80, max: 65536 }), MAX_LINE),
    max_connections: optional(integer({ min: 1 }), 100),
    max_connections_per_address: optional(integer({ min: 1 }), 10),
    max_login_failures: optional(integer({ min: 1 }), 5),
    max_errors: optional(integer({ min: 0 }), 10),
    min_data_rate: optional(size({ min: 0 }), 1024),
  }),
  timeouts: table({
    handshake: optional(duration(), 10_000),
    login: optional(duration(), 30_000),
    idle: optional(duration(), 300_000),
    command: optional(duration(), 60_000),
    data: optional(duration(), 120_000),
    shutdown: optional(duration(), 60_000),
    login_delay: optional(duration({ zero: 'no delay' }), 1000),
    login_failure_decay: optional(duration(), 60_000),
  }),
});
type Config = ReturnType<typeof schema.parse>;

const options = (y: Argv) =>
  y
    .option('listen', { alias: 'l', type: 'string', describe: 'Listen on ADDRESS:PORT (default: listen in the config)', requiresArg: true })
    .option('inetd', { type: 'boolean', describe: 'Serve the one connection on stdin/stdout (inetd, systemd Accept=yes)' })
    .option('hash-password', { type: 'boolean', describe: 'Read a password (without echo on a terminal) and print its scrypt hash for the config' });

/** Read one password: without echo from a terminal, else the first line of stdin. */
async function readPassword(io: Io): Promise<string> {
  if (isTerminal(io)) return readSecret(io, 'Password: ');
  let text = '';
  for await (const chunk of io.stdin) {
    text += String(chunk);
    if (text.includes('\n') || text.length > 4096) break;
  }
  return text.split('\n')[0].replace(/\r$/, '');
}

/** Every user can log in somehow, and no two users see one mailbox unless both say they share it. */
function checkUsers(config: Config, source: Located): void {
  const owners = new Map<string, string>();
  for (const [u, e] of Object.entries(config.users)) {
    if (!e.password && !e.certificate_sha256.length && !e.certificate_name)
      throw configError(source.file!, `users.${u}`, 'needs password, certificate_sha256 or certificate_name');
    const mailbox = resolve(configPath(source, e.mailbox));
    const other = owners.get(mailbox);
    if (other !== undefined && !(e.shared_mailbox && config.users[other].shared_mailbox))
      throw configError(source.file!, `users.${u}.mailbox`, `${mailbox} is also ${other}'s mailbox (set shared_mailbox = true for both to share it)`);
    owners.set(mailbox, u);
  }
}

/** Everything a start checks, for --check-config too: the file, the users, the certificates. */
function check(config: Config, source: Located): Settings {
  if (!source.file) throw configError(source.dir, '', 'post-office needs a config file (tls, users): see post-office.toml(5)');
  checkUsers(config, source);
  if (config.user) lookUpUser(config.user, source.file);
  return settingsOf(config, source);
}

function settingsOf(config: Config, source: Located): Settings {
  return {
    tls: contextOptions(tlsFromConfig(config.tls, source, 'post-office')),
    clientCert: 'optional',
    limits: {
      maxConnections: config.limits.max_connections,
      maxPerAddress: config.limits.max_connections_per_address,
      handshakeTimeout: config.timeouts.handshake,
      shutdownTimeout: config.timeouts.shutdown,
    },
  };
}

/** Most addresses, and most user names, the failed-login tables keep (the stalest are forgotten first). */
const LOGIN_TABLE_ENTRIES = 10_000;

function guardLimits(config: Config): GuardLimits {
  return {
    maxFailures: config.limits.max_login_failures,
    decay: config.timeouts.login_failure_decay,
    delay: config.timeouts.login_delay,
    maxEntries: LOGIN_TABLE_ENTRIES,
  };
}

type Hooks = Pick<ImrpConfig, 'onLogin' | 'onFetch'>;

/** The server's metrics (post-office(1) METRICS): connections, logins and login failures, messages and bytes fetched. */
function metricsOf(r: Registry): { hooks: Hooks; connection: (event: string) => void } {
  const logins = r.counter('ima_logins_total', 'Login attempts by method (password, certificate) and result (ok, failed, refused).');
  const failures = r.counter('ima_login_failures_total', 'Failed or refused logins.');
  const messages = r.counter('ima_messages_total', 'Messages sent by FETCH, by result (sent, failed: cut off while sending).');
  const bytes = r.counter('ima_message_bytes_total', 'Bytes of those messages, by result.');
  return {
    hooks: {
      onLogin: (method, result) => {
        logins.inc({ method, result });
        if (result !== 'ok') failures.inc();
      },
      onFetch: (result, n) => {
        messages.inc({ result });
        bytes.inc({ result }, n);
      },
    },
    connection: connectionMetrics(r).observe,
  };
}

function sessionOf(config: Config, source: Located, log: Log, guard: LoginGuard, hooks: Hooks = {}): ImrpConfig {
  const users = Object.fromEntries(Object.entries(config.users).map(([u, e]) => [u, { ...e, mailbox: configPath(source, e.mailbox) }]));
  return {
    name: config.name,
    users,
    limits: {
      maxLine: config.limits.max_line,
      maxErrors: config.limits.max_errors,
      minDataRate: config.limits.min_data_rate,
    },
    timeouts: {
      idle: config.timeouts.idle,
      login: config.timeouts.login,
      command: config.timeouts.command,
      data: config.timeouts.data,
    },
    log,
    guard,
    dummyHash: dummyHash(Object.values(users).map((e) => e.password)),
    ...hooks,
  };
}

export async function main(args: string[], io: Io): Promise<number> {
  if (args.includes('--hash-password')) {
    const pw = await readPassword(io);
    if (pw === '') throw usageError('empty password');
    io.stdout.write(`${await hashPassword(pw)}\n`);
    return EXIT.OK;
  }
  const s = await start(
    {
      name: 'post-office',
      role: 'server',
      notAsRoot: true,
      usage: '$0 [--listen ADDRESS:PORT | --inetd] [options]\n$0 --hash-password',
      schema,
      options,
      check,
    },
    args,
    io,
  );
  if (typeof s === 'number') return s;
  const { argv, log, source } = s;
  const guard = new LoginGuard(guardLimits(s.config));
  const registry = s.config.metrics === undefined ? undefined : new Registry();
  const metrics = registry && metricsOf(registry);
  let settings = s.prepared;
  let session = sessionOf(s.config, source, log, guard, metrics?.hooks);
  const where = whereFrom(argv.listen, argv.inetd, io.env, { stdin: io.stdin, stdout: io.stdout }, process.pid) ?? {
    mode: 'listen' as const,
    ...parseHostPort(s.config.listen),
  };
  // One connection under inetd has nothing worth scraping.
  const endpoint = registry && where.mode !== 'inetd' ? await serveMetrics(s.config.metrics!, registry, log, source.file!) : undefined;
  try {
    const drop = dropAfterBinding(s.config.user, source.file!, log);
    if (where.mode !== 'listen') drop(); // the socket is inherited: nothing to bind
    await serve(
      where,
      settings,
      {
        session: (socket, peer, stopping) => new ImrpSession(socket, peer, session).run(stopping),
        refuse: (socket, reason) => socket.write(bye(reason)),
        reload: async () => {
          const next = loadConfig(schema, source.file!, true).config;
          settings = check(next, source);
          session = sessionOf(next, source, log, guard, metrics?.hooks);
          guard.setLimits(guardLimits(next));
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
