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
import { Readable } from 'node:stream';
import type { Argv } from 'yargs';
import { start } from '../cli.js';
import { type Located, boolean, configPath, duration, integer, list, optional, size, string, table } from '../config.js';
import { EXIT, Failure, configError, usageError } from '../failure.js';
import { ImrpClient, LoginRefused } from '../imrp/client.js';
import { IMRP_PORT, parseMsgLine } from '../imrp/wire.js';
import { cleanTmp, deliverToMailbox, openMailbox } from '../mailbox.js';
import { DEFAULT_LIMITS } from '../message/index.js';
import { isTerminal, readSecret } from '../prompt.js';
import type { Io } from '../io.js';
import { loadTlsMaterial, systemRoots } from '../net/tls.js';

const schema = table({
  server: string({ nonEmpty: true }),
  port: optional(integer({ min: 1, max: 65535 }), IMRP_PORT),
  server_name: optional(string(), ''),
  user: string({ nonEmpty: true }),
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
  tmp_max_age: optional(duration(), 36 * 3600 * 1000),
});
type Config = ReturnType<typeof schema.parse>;

const options = (y: Argv) =>
  y
    .option('keep', { type: 'boolean', describe: 'Mark fetched messages seen instead of deleting them on the server' })
    .option('progress', { type: 'boolean', describe: 'Show a progress bar (default: when stderr is a terminal)' });

/** Messages up to this size are read into memory and stored PARALLEL at a time. */
const SMALL = 1024 * 1024;
const PARALLEL = 16;
/** Ids per SEEN or DELETE line: 25 ids of 37 bytes fit ima(7)'s 1000-byte line. */
const ACK_BATCH = 25;

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
    });
    return { tls: { cert, key, ca } };
  }
  const ca = config.ca.length ? config.ca.map((p) => readConfigFile(file(p), configName, 'ca')) : systemRoots();
  if (!config.password_file) return { tls: { ca } };
  return { tls: { ca }, passwordFromFile: readConfigFile(file(config.password_file), configName, 'password_file').toString('utf8').split('\n')[0] };
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
  const { argv, config, log, source } = s;
  const [dirArg, ...extra] = argv._.map(String);
  if (extra.length) throw usageError('at most one DIR');
  const dir = dirArg ? resolve(io.cwd, dirArg) : configFile(config.mailbox, source, io);
  const keep = argv.keep ?? config.keep;
  const tty = !!(io.stderr as NodeJS.WriteStream).isTTY;
  const progress = argv.progress ?? tty;
  const tlsOptions = s.prepared.tls;
  const pw = config.certificate ? undefined : await password(config, io, s.prepared.passwordFromFile);
  await openMailbox(dir, true);
  // What killed runs left in tmp/ (a delivery in progress is seconds old).
  const cleaned = await cleanTmp(dir, config.tmp_max_age);
  if (cleaned) log.info(`${dir}: removed ${cleaned} stale entries from tmp/`);

  const server = { host: config.server, port: config.port, serverName: config.server_name || config.server, tls: tlsOptions, timeout: config.timeout };
  // Another connection, logged in, when the first had to be given up.
  const reconnect = async (): Promise<ImrpClient> => {
    const c = await ImrpClient.connect(server);
    try {
      await c.login(config.user, pw);
    } catch (e) {
      c.close();
      throw e;
    }
    return c;
  };
  let client = await ImrpClient.connect(server);
  // However the server trickles its bytes, the whole run ends by the deadline.
  let late = false;
  const deadline = setTimeout(() => {
    late = true;
    client.socket.destroy();
  }, config.deadline);
  let fetched = 0;
  let bytes = 0;
  let invalid = 0;
  let left = 0;
  // Ids stored durably here, told to the server a line-full at a time
  // (pipelined: the answers are read at the end, and a line is forgotten
  // only once answered).
  const durable: string[] = [];
  const told: string[] = [];
  const acknowledge = () => {
    const line = `${keep ? 'SEEN' : 'DELETE'} ${durable.splice(0).join(' ')}`;
    client.send(line);
    told.push(line);
  };
  try {
    try {
      await client.login(config.user, pw);
    } catch (e) {
      if (e instanceof LoginRefused) {
        log.error(e.message);
        return EXIT.NOPERM;
      }
      throw e;
    }
    // The progress bar's total comes from a list, sent in the same round trip; then every new message streamed.
    if (progress) client.send('LIST new');
    client.send('FETCH NEW');
    let total = 0;
    for (let l = progress ? await client.line() : 'OK'; !l.startsWith('OK'); l = await client.line()) {
      if (parseMsgLine(l)) total++;
      else throw new Failure('temporary', `${client.where}: unexpected answer to LIST: ${l.slice(0, 100)}`);
    }
    const limits = { ...DEFAULT_LIMITS, maxTotalBytes: config.max_message_bytes, maxEntries: config.max_entries };
    // Store one message; only once it is durable may the server forget it. False when it is refused.
    const store = async (id: string, size: number, input: Readable): Promise<boolean> => {
      let ok = false;
      try {
        // The server's id is checked before the message is stored: a message sent under another id is left there.
        await deliverToMailbox(dir, input, { limits, expectName: id, headersAsSent: true });
        durable.push(id);
        if (durable.length >= ACK_BATCH) acknowledge();
        fetched++;
        bytes += size;
        ok = true;
      } catch (e) {
        if (!(e instanceof Failure) || e.temporary) throw e;
        invalid++;
        log.error(`message ${id} refused and left on the server: ${e.message}`);
      }
      if (progress) progressBar(io, total, fetched + invalid, bytes);
      return ok;
    };
    // Small messages are taken off the wire into memory and stored several at
    // a time, so their fsyncs overlap; a large one streams to disk alone.
    const inFlight = new Set<Promise<unknown>>();
    let failure: unknown;
    const track = (p: Promise<unknown>) => {
      const t = p.catch((e) => void (failure ??= e)).finally(() => inFlight.delete(t));
      inFlight.add(t);
    };
    let abandoned = false;
    for (let l = await client.line(); !l.startsWith('OK'); l = await client.line()) {
      const m = /^MESSAGE ([0-9a-f-]{36}) (\d{1,15})$/.exec(l);
      if (!m) throw new Failure('temporary', `${client.where}: unexpected answer to FETCH: ${l.slice(0, 100)}`);
      const [id, size] = [m[1], Number(m[2])];
      if (failure) throw failure;
      if (size <= SMALL) {
        const parts: Buffer[] = [];
        for await (const c of client.reader.readBytes(size)) parts.push(Buffer.from(c));
        while (inFlight.size >= PARALLEL) await Promise.race(inFlight);
        track(store(id, size, Readable.from([Buffer.concat(parts)])));
        continue;
      }
      await Promise.all(inFlight);
      const { stream, done } = client.reader.pumpData(size);
      let stored = false;
      try {
        stored = await store(id, size, stream);
      } finally {
        // A refused message's rest is not read: it may be a bomb of a gigabyte. This connection is given up.
        if (stored) stream.resume();
        else client.socket.destroy();
        await done.catch((e) => {
          if (stored) throw e;
        });
      }
      if (!stored) {
        abandoned = true;
        break;
      }
    }
    await Promise.all(inFlight);
    if (abandoned) {
      // What was told on the lost connection is told again on a new one: the server forgets nothing unconfirmed.
      client = await reconnect();
      for (const line of told) client.send(line);
      log.error('a refused message was not read to its end: fetch stopped; messages after it stay on the server');
    }
    if (durable.length) acknowledge();
    if (failure) throw failure;
    while (told.length) {
      await client.ok(keep ? 'SEEN' : 'DELETE');
      told.shift();
    }
    client.send('FOLDERS');
    for (let l = await client.line(); !l.startsWith('OK'); l = await client.line()) left += Number(/^FOLDER \S+ (\d+)$/.exec(l)?.[1] ?? 0);
  } catch (e) {
    if (!late) throw e;
    throw new Failure(
      'temporary',
      `${client.where}: not done within the deadline of ${config.deadline / 1000} s (deadline in ${source.file ?? 'fetch-mail.toml'})`,
    );
  } finally {
    clearTimeout(deadline);
    // Stored but not yet told (a failure cut the run short): tell the server before leaving.
    if (durable.length && !client.socket.destroyed) acknowledge();
    client.close();
    if (progress && (fetched || invalid)) io.stderr.write('\n');
  }
  if (tty || argv.verbose)
    io.stderr.write(`fetch-mail: fetched ${fetched} message${fetched === 1 ? '' : 's'} (${bytes} bytes) into ${dir}; ${left} left on the server\n`);
  return invalid ? EXIT.FAIL : EXIT.OK;
}
