// smtp-receive: the SMTP server of the legacy bridge (DESIGN.md 8). Role mx:
// mail from the Internet for our domains, each RCPT checked against the
// routing table, SPF/DKIM/DMARC recorded, each message converted to IMA and
// handed to handle-incoming-mail with the envelope recipients. Role
// submission: users log in over TLS and send as the addresses their rules
// allow; the message goes to the submission command (the queue).
//
// It does not store or route mail itself, never relays for the mx role,
// never takes AUTH without TLS, and never answers 250 before the handler
// said the message is stored or handed on.
import type { Argv } from 'yargs';
import type { SMTPServerOptions } from 'smtp-server';
import { domainProblem, mailboxProblem } from '../address.js';
import { start } from '../cli.js';
import { type Located, boolean, command, configPath, duration, integer, list, loadConfig, map, optional, size, string, table } from '../config.js';
import { EXIT, configError, usageError } from '../failure.js';
import type { Io } from '../io.js';
import type { Log } from '../log.js';
import { listenProblem, parseHostPort, whereFrom } from '../net/listen.js';
import { tlsFromConfig, tlsSchema } from '../net/tls.js';
import { leaveCluster, listenPid, runWorkers, supervises } from '../net/workers.js';
import { hashProblem } from '../password.js';
import { dropAfterBinding, lookUpUser } from '../privileges.js';
import { commandProblem } from '../stage.js';
import { senderRuleProblem } from '../smtp/receive-auth.js';
import { ReceiveServer, serveSmtp } from '../smtp/receive-server.js';
import { type SessionSettings, Sessions } from '../smtp/receive-session.js';
import { dnsResolver, loadMailauth } from '../smtp/receive-verdicts.js';

const hostPort = string({ check: (s) => (s === '' ? undefined : listenProblem(s)) });
const checked = (problem: (s: string) => string | undefined) => string({ check: problem });

const schema = table({
  role: optional(string({ oneOf: ['mx', 'submission'] }), 'mx'),
  hostname: string({ check: domainProblem }),
  listen: optional(hostPort, ''),
  implicit_tls: optional(boolean(), false),
  in_process: optional(boolean(), true),
  user: optional(string(), ''),
  workers: optional(integer({ min: 1, max: 256 }), 1),
  spool_dir: optional(string(), ''),
  notice_command: optional(list(string({ nonEmpty: true })), ['queue-mail']),
  notice_from: optional(
    checked((s) => (s === '' ? undefined : mailboxProblem(s))),
    '',
  ),
  tls: tlsSchema(),
  limits: table({
    max_message_bytes: optional(size({ min: 1024 }), 50 * 1024 * 1024),
    max_header_bytes: optional(size({ min: 1024, max: 1024 * 1024 }), 64 * 1024),
    max_recipients: optional(integer({ min: 1, max: 100_000 }), 100),
    max_command_line: optional(integer({ min: 512, max: 65536 }), 4096),
    max_connections: optional(integer({ min: 1 }), 100),
    max_connections_per_address: optional(integer({ min: 1 }), 10),
    max_login_failures: optional(integer({ min: 1 }), 5),
  }),
  timeouts: table({
    idle: optional(duration(), 300_000),
    handler: optional(duration(), 600_000),
    shutdown: optional(duration(), 60_000),
    login_delay: optional(duration({ zero: 'no delay' }), 1000),
    login_failure_decay: optional(duration(), 60_000),
  }),
  mx: table({
    handler: optional(command(), ['handle-incoming-mail']),
    check: optional(list(string({ nonEmpty: true })), ['handle-incoming-mail', '--check']),
    verdicts: optional(boolean(), true),
    dns_servers: optional(list(string({ nonEmpty: true })), [] as string[]),
    dmarc_reject: optional(boolean(), true),
    postmaster: optional(
      checked((s) => (s === '' ? undefined : mailboxProblem(s))),
      '',
    ),
  }),
  submission: table({
    command: optional(command(), ['queue-mail']),
    envelope_flag: optional(string(), '--recipient'),
    users: map(
      table({
        password: checked((s) => hashProblem(s)),
        senders: list(checked(senderRuleProblem), { nonEmpty: true }),
      }),
    ),
  }),
});
type Config = ReturnType<typeof schema.parse>;
type Role = 'mx' | 'submission';

const options = (y: Argv) =>
  y
    .option('listen', { alias: 'l', type: 'string', describe: 'Listen on ADDRESS:PORT (default: listen in the config)', requiresArg: true })
    .option('inetd', { type: 'boolean', describe: 'Serve the one connection on stdin/stdout (inetd, systemd Accept=yes)' })
    .option('role', { type: 'string', choices: ['mx', 'submission'], describe: 'mx or submission (default: role in the config)', requiresArg: true })
    .option('implicit-tls', { type: 'boolean', describe: 'TLS from the first byte (port 465) instead of STARTTLS' });

function settingsOf(config: Config, role: Role, source: Located, io: Io, log: Log): SessionSettings {
  const { limits, timeouts, mx, submission } = config;
  return {
    role,
    hostname: config.hostname,
    maxMessageBytes: limits.max_message_bytes,
    maxHeaderBytes: limits.max_header_bytes,
    spoolDir: config.spool_dir ? configPath(source, config.spool_dir) : undefined,
    command: role === 'mx' ? mx.handler : submission.command,
    envelopeFlag: role === 'mx' ? '--recipient' : submission.envelope_flag,
    inProcess: config.in_process,
    handlerTimeout: timeouts.handler,
    // A plain copy, made once, as server-receive's: spreading process.env for
    // each message's handler cost a call into the runtime per variable
    // (18 us a message in a CPU profile of 8,000 4 KB messages).
    env: { ...io.env },
    cwd: io.cwd,
    stderr: io.stderr,
    log,
    verdicts: role === 'mx' && mx.verdicts ? { resolver: dnsResolver(mx.dns_servers), enforceDmarcReject: mx.dmarc_reject } : undefined,
    maxRecipients: limits.max_recipients,
    maxPerAddress: limits.max_connections_per_address,
    postmaster: mx.postmaster || `postmaster@${config.hostname}`,
    check: role === 'mx' ? mx.check : [],
    users: new Map(Object.entries(submission.users)),
    maxLoginFailures: limits.max_login_failures,
    loginDelay: timeouts.login_delay,
    loginFailureDecay: timeouts.login_failure_decay,
    fromProblem: undefined,
    notice: config.notice_command.length ? { command: config.notice_command, from: config.notice_from || `mailer-daemon@${config.hostname}` } : undefined,
  };
}

function tlsOf(config: Config, source: Located): { key: Buffer; cert: Buffer } {
  const m = tlsFromConfig(config.tls, source, 'smtp-receive', config.hostname);
  return { key: m.key, cert: m.cert };
}

type Tls = ReturnType<typeof tlsOf>;

/** Everything a start checks, for --check-config too: the file, the certificate, the commands of the config's role. */
function check(config: Config, source: Located, io: Io): Tls {
  if (!source.file) throw configError(source.dir, '', 'smtp-receive needs a config file (hostname, tls.certificate, tls.key): see smtp-receive.toml(5)');
  const commands: [string, readonly string[]][] = [
    ['mx.handler', config.mx.handler],
    ['mx.check', config.mx.check],
    ['submission.command', config.submission.command],
    ['notice_command', config.notice_command],
  ];
  for (const [key, argv] of commands) {
    const problem = argv.length ? commandProblem(argv, io.env, io.cwd) : undefined;
    if (problem) throw configError(source.file, key, problem);
  }
  if (config.user) lookUpUser(config.user, source.file);
  return tlsOf(config, source);
}

function serverOptions(config: Config, role: Role, implicit: boolean, sessions: Sessions): SMTPServerOptions {
  return {
    name: config.hostname,
    secure: implicit,
    minVersion: 'TLSv1.2',
    disabledCommands: role === 'mx' ? ['AUTH'] : [],
    authMethods: ['PLAIN', 'LOGIN'],
    authOptional: role === 'mx',
    allowInsecureAuth: false,
    hideENHANCEDSTATUSCODES: false,
    disableReverseLookup: true,
    logger: false,
    ...limitOptions(config),
    ...sessions.hooks(),
  } as SMTPServerOptions;
}

/**
 * The options smtp-server reads as it goes (SIZE in EHLO and MAIL, the
 * connection limit, and for each new connection its line limit and idle
 * timeout): a reload sets them anew, or EHLO went on announcing the old
 * SIZE while the stream enforced the new one.
 */
function limitOptions(config: Config): Partial<SMTPServerOptions> {
  return {
    size: config.limits.max_message_bytes,
    maxClients: config.limits.max_connections,
    socketTimeout: config.timeouts.idle,
    closeTimeout: config.timeouts.shutdown,
    maxCommandLength: config.limits.max_command_line,
  };
}

export async function main(args: string[], io: Io): Promise<number> {
  try {
    return await serveConfigured(args, io);
  } finally {
    leaveCluster(); // a worker's server is over: its process may exit
  }
}

async function serveConfigured(args: string[], io: Io): Promise<number> {
  const usage = '$0 [--listen ADDRESS:PORT | --inetd] [--role mx|submission] [--implicit-tls] [options]';
  const s = await start({ name: 'smtp-receive', role: 'server', usage, schema, options, check, notAsRoot: true }, args, io);
  if (typeof s === 'number') return s;
  const { argv, log, source, config } = s;
  const role = (argv.role ?? config.role) as Role;
  const implicit = argv.implicitTls ?? config.implicit_tls;
  const fallback = config.listen || (role === 'mx' ? '[::]:25' : implicit ? '[::]:465' : '[::]:587');
  const where = whereFrom(argv.listen, argv.inetd, io.env, { stdin: io.stdin, stdout: io.stdout }, listenPid()) ?? {
    mode: 'listen' as const,
    ...parseHostPort(fallback),
  };
  if (where.mode === 'inetd' && argv.listen) throw usageError('--inetd and --listen exclude each other');
  if (supervises(config.workers, where, io))
    return runWorkers(config.workers, { log, signals: io.signals!, onListening: dropAfterBinding(config.user, source.file!, log) });
  if (role === 'submission' && Object.keys(config.submission.users).length === 0) log.warn('role submission with no [submission.users]: nobody can log in');
  if (role === 'mx' && config.mx.verdicts) await loadMailauth();
  let settings = settingsOf(config, role, source, io, log);
  const sessions = new Sessions(() => settings, log);
  const server = new ReceiveServer({ ...serverOptions(config, role, implicit, sessions), ...s.prepared }, log);
  // Port 25, 465 and 587 need root to bind: bound, the server becomes `user` before it takes a connection.
  const drop = dropAfterBinding(config.user, source.file!, log);
  if (where.mode !== 'listen') drop(); // the socket is inherited: nothing to bind
  await serveSmtp(where, server, {
    log,
    onListening: drop,
    signals: io.signals,
    signal: io.signal,
    drained: () => sessions.drained(),
    reload: async () => {
      const next = loadConfig(schema, source.file!, true).config;
      const tls = check(next, source, io);
      settings = settingsOf(next, role, source, io, log);
      Object.assign(server.options, limitOptions(next));
      server.updateSecureContext(tls);
    },
  });
  return EXIT.OK;
}
