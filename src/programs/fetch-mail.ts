// fetch-mail: fetch new messages from a post-office into a local mailbox.
//
// Each message is stored and fsync'ed locally before the server is told to
// delete it (or, with --keep, to mark it seen), so an interrupted run loses
// nothing and the next one fetches nothing twice. What the server sends is
// hostile input: it is read under ima-message(5)'s rules and nothing is
// written outside DIR. It never takes a password on the command line.
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { resolve } from 'node:path';
import type { Argv } from 'yargs';
import { type Started, start } from '../cli.js';
import { type Located, boolean, configPath, duration, integer, list, optional, size, string, table } from '../config.js';
import { EXIT, Failure, configError, usageError } from '../failure.js';
import { type ConnectOptions, ImrpClient, LoginRefused } from '../imrp/client.js';
import { Acknowledgements, type Store, countLeft, receiveNew, requestNew } from '../imrp/fetch.js';
import { IMRP_PORT, userNameProblem } from '../imrp/wire.js';
import { cleanTmp, deliverToMailbox, openMailbox } from '../mailbox.js';
import { DEFAULT_LIMITS } from '../message/index.js';
import { isTerminal, readSecret } from '../prompt.js';
import type { Io } from '../io.js';
import type { Log } from '../log.js';
import { loadCaFiles, loadTlsMaterial } from '../net/tls.js';

const schema = table({
  server: string({ nonEmpty: true }),
  port: optional(integer({ min: 1, max: 65535 }), IMRP_PORT),
  server_name: optional(string(), ''),
  // Checked as the server checks LOGIN: a space would make the rest of the name part of the password.
  user: string({ nonEmpty: true, check: userNameProblem }),
  ca: optional(list(string({ nonEmpty: true })), [] as string[]),
  certificate: optional(string(), ''),
  key: optional(string(), ''),
  password_file: optional(string(), ''),
  password_env: optional(string(), 'IMA_PASSWORD'),
  mailbox: optional(string(), '~/Mail'),
  keep: optional(boolean(), false),
  timeout: optional(duration(), 60_000),
  deadline: optional(duration(), 3_600_000),
  max_message_bytes: optional(size({ min: 1024 }), DEFAULT_LIMITS.maxTotalBytes),
  max_entries: optional(integer({ min: 1 }), DEFAULT_LIMITS.maxEntries),
  tmp_max_age: optional(duration({ timer: false }), 36 * 3600 * 1000),
});
type Config = ReturnType<typeof schema.parse>;

const options = (y: Argv) =>
  y
    .option('keep', { type: 'boolean', describe: 'Mark fetched messages seen instead of deleting them on the server' })
    .option('progress', { type: 'boolean', describe: 'Show a progress bar (default: when stderr is a terminal)' });

const expand = (p: string, io: Io) => (p.startsWith('~/') ? resolve(io.env.HOME || homedir(), p.slice(2)) : resolve(io.cwd, p));

/** The password: from a file (read by the config check), the environment, or a prompt without echo; never argv. */
async function password(config: Config, io: Io, fromFile: string | undefined): Promise<string> {
  if (fromFile !== undefined) return fromFile;
  const fromEnv = config.password_env ? io.env[config.password_env] : undefined;
  if (fromEnv) return fromEnv;
  if (!isTerminal(io)) throw usageError(`no password: set password_file or certificate in fetch-mail.toml, or ${config.password_env} in the environment`);
  return readSecret(io, `Password for ${config.user}@${config.server}: `);
}

interface Prepared {
  tls: { cert?: string | Buffer; key?: string | Buffer; ca: (string | Buffer)[] };
  /** The first line of password_file, when one is set and no certificate is. */
  passwordFromFile?: string;
}

/** A path from the config: ~/ is the user's home, else relative to the config file. */
const configFile = (p: string, source: Located, io: Io) => (p.startsWith('~/') ? expand(p, io) : configPath(source, p));

/** Everything a start checks, for --check-config too: certificate and key, CA files, the password file. */
function check(config: Config, source: Located, io: Io): Prepared {
  const configName = source.file ?? 'fetch-mail.toml';
  const file = (p: string) => configFile(p, source, io);
  if (!!config.certificate !== !!config.key) throw configError(configName, config.certificate ? 'key' : 'certificate', 'certificate and key go together');
  if (config.certificate) {
    const { cert, key, ca } = loadTlsMaterial({
      certificate: file(config.certificate),
      key: file(config.key),
      ca: config.ca.map(file),
      configFile: configName,
      keys: { certificate: 'certificate', key: 'key', ca: 'ca' },
    });
    return { tls: { cert, key, ca } };
  }
  const ca = loadCaFiles(config.ca.map(file), configName, 'ca');
  if (!config.password_file) return { tls: { ca } };
  const path = file(config.password_file);
  return { tls: { ca }, passwordFromFile: firstLine(readConfigFile(path, configName, 'password_file'), path, configName) };
}

/**
 * The password in a password file: its first line, without the CR a file
 * written with CRLF ends it with (as post-office --hash-password reads one).
 * Any other control character would go to the server as part of the login
 * line and fail every run: refused here, where the user can see why.
 */
function firstLine(text: Buffer, path: string, configName: string): string {
  const line = text.toString('utf8').split('\n')[0].replace(/\r$/, '');
  if (line === '') throw configError(configName, 'password_file', `${path}: the first line is empty`);
  if (/[\x00-\x1f\x7f]/.test(line)) throw configError(configName, 'password_file', `${path}: the first line holds a control character`);
  return line;
}

function readConfigFile(path: string, configName: string, key: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw configError(configName, key, `${path}: ${code === 'ENOENT' ? 'no such file' : `cannot read (${code})`}`);
  }
}

function progressBar(io: Io, total: number, done: number, bytes: number): void {
  const width = 30;
  const filled = total ? Math.round((done / total) * width) : width;
  io.stderr.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} messages, ${(bytes / 1048576).toFixed(1)} MB`);
}

export async function main(args: string[], io: Io): Promise<number> {
  const s = await start({ name: 'fetch-mail', role: 'user', usage: '$0 [--keep] [DIR]', schema, options, check }, args, io);
  if (typeof s === 'number') return s;
  const run = await settings(s, io);
  await prepareMailbox(run);
  const tally = await fetchAll(run);
  if (typeof tally === 'number') return tally;
  if (run.summary) summarize(run, tally);
  return tally.invalid ? EXIT.FAIL : EXIT.OK;
}

/** What a run needs from the command line, the config and the user. */
interface Run {
  io: Io;
  config: Config;
  log: Log;
  source: Located;
  dir: string;
  keep: boolean;
  progress: boolean;
  /** Say what was fetched at the end: on a terminal, or asked for with --verbose. */
  summary: boolean;
  server: ConnectOptions;
  /** Undefined when a client certificate logs in. */
  password?: string;
}

interface Tally {
  fetched: number;
  bytes: number;
  invalid: number;
  left: number;
}

/** The connection in use: a refused large message makes the run give it up for another. */
interface Connection {
  client: ImrpClient;
}

async function settings(s: Started<{ keep?: boolean; progress?: boolean }, Config, Prepared>, io: Io): Promise<Run> {
  const { argv, config, log, source } = s;
  const [dirArg, ...extra] = argv._.map(String);
  if (extra.length) throw usageError('at most one DIR');
  const dir = dirArg ? resolve(io.cwd, dirArg) : configFile(config.mailbox, source, io);
  const tty = !!(io.stderr as NodeJS.WriteStream).isTTY;
  const server = { host: config.server, port: config.port, serverName: config.server_name || config.server, tls: s.prepared.tls, timeout: config.timeout };
  return {
    io,
    config,
    log,
    source,
    dir,
    keep: argv.keep ?? config.keep,
    progress: argv.progress ?? tty,
    summary: tty || !!argv.verbose,
    server,
    password: config.certificate ? undefined : await password(config, io, s.prepared.passwordFromFile),
  };
}

async function prepareMailbox({ dir, config, log }: Run): Promise<void> {
  await openMailbox(dir, true);
  // What killed runs left in tmp/ (a delivery in progress is seconds old).
  const cleaned = await cleanTmp(dir, config.tmp_max_age);
  if (cleaned) log.info(`${dir}: removed ${cleaned} stale entries from tmp/`);
}

/** Log in, fetch and store every new message, acknowledge them, count what is left. A number is an exit code. */
async function fetchAll(run: Run): Promise<Tally | number> {
  const { config, io } = run;
  const tally: Tally = { fetched: 0, bytes: 0, invalid: 0, left: 0 };
  const acks = new Acknowledgements(run.keep ? 'SEEN' : 'DELETE');
  const conn: Connection = { client: await ImrpClient.connect(run.server) };
  // However the server trickles its bytes, the whole run ends by the deadline.
  let late = false;
  const deadline = setTimeout(() => {
    late = true;
    conn.client.socket.destroy();
  }, config.deadline);
  try {
    if (!(await login(conn.client, run))) return EXIT.NOPERM;
    await fetchAndStore(run, conn, acks, tally);
    tally.left = await countLeft(conn.client);
  } catch (e) {
    if (!late) throw e;
    throw new Failure(
      'temporary',
      `${conn.client.where}: not done within the deadline of ${config.deadline / 1000} s (deadline in ${run.source.file ?? 'fetch-mail.toml'})`,
    );
  } finally {
    clearTimeout(deadline);
    // Stored but not yet told (a failure cut the run short): tell the server before leaving.
    if (!conn.client.socket.destroyed) acks.flush(conn.client);
    conn.client.close();
    if (run.progress && (tally.fetched || tally.invalid)) io.stderr.write('\n');
  }
  return tally;
}

/** False when the server refuses the login (logged); other trouble is thrown. */
async function login(client: ImrpClient, { config, password, log }: Run): Promise<boolean> {
  try {
    await client.login(config.user, password);
    return true;
  } catch (e) {
    if (!(e instanceof LoginRefused)) throw e;
    log.error(e.message);
    return false;
  }
}

/** Fetch every new message into the mailbox, then have the server forget (or mark seen) each one stored. */
async function fetchAndStore(run: Run, conn: Connection, acks: Acknowledgements, tally: Tally): Promise<void> {
  const total = await requestNew(conn.client, run.progress);
  const { abandoned, failure } = await receiveNew(conn.client, storeMessage(run, conn, acks, tally, total));
  if (abandoned) {
    conn.client = await ImrpClient.connectAndLogin(run.server, run.config.user, run.password);
    acks.retell(conn.client);
    run.log.error('a refused message was not read to its end: fetch stopped; messages after it stay on the server');
  }
  acks.flush(conn.client);
  if (failure) throw failure;
  await acks.confirm(conn.client);
}

/** Store one message; only once it is durable may the server forget it. False when it is refused. */
function storeMessage(run: Run, conn: Connection, acks: Acknowledgements, tally: Tally, total: number): Store {
  const { config, dir, io, log } = run;
  const limits = { ...DEFAULT_LIMITS, maxTotalBytes: config.max_message_bytes, maxEntries: config.max_entries };
  return async (id, size, input) => {
    let ok = false;
    try {
      // The server's id is checked before the message is stored: a message sent under another id is left there.
      await deliverToMailbox(dir, input, { limits, expectName: id, headersAsSent: true });
      acks.add(conn.client, id);
      tally.fetched++;
      tally.bytes += size;
      ok = true;
    } catch (e) {
      if (!(e instanceof Failure) || e.temporary) throw e;
      tally.invalid++;
      log.error(`message ${id} refused and left on the server: ${e.message}`);
    }
    if (run.progress) progressBar(io, total, tally.fetched + tally.invalid, tally.bytes);
    return ok;
  };
}

function summarize({ io, dir }: Run, { fetched, bytes, left }: Tally): void {
  io.stderr.write(`fetch-mail: fetched ${fetched} message${fetched === 1 ? '' : 's'} (${bytes} bytes) into ${dir}; ${left} left on the server\n`);
}
