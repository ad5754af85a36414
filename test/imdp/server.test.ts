// ImdpSession in-process over pipes (no kernel buffers in between), so what
// the session buffers for a peer is exactly what the test can see.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { Duplex, PassThrough } from 'node:stream';
import { test } from 'node:test';
import tls, { type TLSSocket } from 'node:tls';
import { ImdpSession, REPLY_BUFFER, type SessionConfig } from '../../src/imdp/server.js';
import { createLog } from '../../src/log.js';
import { serve } from '../../src/net/listen.js';
import { contextOptions, loadTlsMaterial } from '../../src/net/tls.js';
import { certs, clientTls, pki } from '../imdp-fixture.js';
import { HEADERS, entry, tarOf } from '../tarbuild.js';

const log = createLog(new PassThrough().resume(), 'test', 'info');
const session: SessionConfig = {
  domain: 'b.test',
  limits: { maxMessageSize: 1 << 20, maxHeaderBytes: 4096, maxEntries: 1000, maxLine: 1000, maxMessages: 10, maxHops: 30, maxErrors: 10, minDataRate: 0 },
  timeouts: { idle: 20_000, firstMessage: 20_000, command: 20_000, data: 20_000, handler: 20_000 },
  handler: ['true'],
  check: [],
  inProcess: false,
  env: {},
  cwd: '/',
  log,
  stderr: new PassThrough().resume(),
};

/** The listener's settings for b.test, requiring a client certificate. */
const settings = {
  tls: contextOptions(loadTlsMaterial({ certificate: certs.b.cert, key: certs.b.key, ca: [pki.caFile], configFile: 'test.toml' })),
  clientCert: 'required' as const,
  limits: { maxConnections: 10, maxPerAddress: 10, handshakeTimeout: 10_000, shutdownTimeout: 10_000 },
};

/** A session over pipes between two TLS sockets; the client once connected, and the server's run. */
async function sessionOverPipes(cfg: SessionConfig): Promise<{ client: TLSSocket; served: Promise<void> }> {
  const toServer = new PassThrough();
  const toClient = new PassThrough();
  const served = serve(
    { mode: 'inetd', stdin: toServer, stdout: toClient },
    settings,
    { session: (socket, peer, stopping) => new ImdpSession(socket, peer, cfg).run(stopping), refuse: () => {} },
    { log },
  );
  const client = tls.connect({ ...clientTls(), servername: 'b.test', socket: Duplex.from({ readable: toClient, writable: toServer }) });
  await once(client, 'secureConnect');
  return { client, served };
}

test('server-receive session: a peer that sends MAIL and DATA together gets ACCEPT and the result in one TLS record, as Postfix flushes when its input runs dry', async () => {
  const { client, served } = await sessionOverPipes(session);
  const records: string[] = [];
  client.on('data', (d: Buffer) => records.push(d.toString('latin1')));
  const greeted = await new Promise<string>((res) => client.once('data', (d: Buffer) => res(d.toString('latin1'))));
  assert.match(greeted, /^IMDP/);
  const message = tarOf(entry('headers', HEADERS), entry('body', 'hello\n'));
  records.length = 0;
  client.write(Buffer.concat([Buffer.from(`MAIL ${message.length}\n${HEADERS}\nDATA\n`), message]));
  while (!records.join('').includes('OK')) await once(client, 'data');
  assert.deepEqual(records.length, 1, `answers in ${records.length} records: ${JSON.stringify(records)}`);
  assert.match(records[0], /^ACCEPT\nOK\b/);
  client.end('DONE\n');
  await served;
});

test('server-receive session: held answers do not wait for a slow handler: ACCEPT and its REPLY line come before the result', async () => {
  const slow = { ...session, handler: ['sh', '-c', 'cat >/dev/null; echo OK b@b.test; sleep 2'] };
  const { client, served } = await sessionOverPipes(slow);
  await once(client, 'data'); // the greeting
  const records: string[] = [];
  client.on('data', (d: Buffer) => records.push(d.toString('latin1')));
  const message = tarOf(entry('headers', HEADERS), entry('body', 'hello\n'));
  client.write(Buffer.concat([Buffer.from(`MAIL ${message.length}\n${HEADERS}\nDATA\n`), message]));
  while (!records.join('').includes('\nOK')) await once(client, 'data');
  const last = records.at(-1)!;
  assert.doesNotMatch(last, /ACCEPT|REPLY/, `held until the handler exited: ${JSON.stringify(records)}`);
  assert.match(records.join(''), /^ACCEPT\nREPLY OK b@b\.test\nOK\b/);
  client.end('DONE\n');
  await served;
});

test('server-receive session: a peer that pipelines commands and reads no answer is not read from once 64 KiB of answers wait', async () => {
  // The pipes between the peers hold 16 KiB each way, whatever Node's default (64 KiB from Node 22 on): what they
  // hold is slack the server's answers can fill before it sees that its peer reads nothing.
  const toServer = new PassThrough({ highWaterMark: 16 * 1024 });
  const toClient = new PassThrough({ highWaterMark: 16 * 1024 });
  let serverSocket!: TLSSocket;
  let waiting!: () => void;
  const blocked = new Promise<void>((res) => (waiting = res));
  let maxBuffered = 0;
  const served = serve(
    { mode: 'inetd', stdin: toServer, stdout: toClient },
    settings,
    {
      session(socket, peer, stopping) {
        serverSocket = socket;
        const write = socket.write.bind(socket) as (s: string) => boolean;
        socket.write = ((s: string) => {
          const r = write(s);
          maxBuffered = Math.max(maxBuffered, socket.writableLength);
          return r;
        }) as typeof socket.write;
        socket.on('newListener', (event) => event === 'drain' && waiting());
        return new ImdpSession(socket, peer, session).run(stopping);
      },
      refuse: () => {},
    },
    { log },
  );
  const client = tls.connect({ ...clientTls(), servername: 'b.test', socket: Duplex.from({ readable: toClient, writable: toServer }) });
  await once(client, 'secureConnect');
  client.pause();
  const mail = Buffer.from('MAIL 100\nfrom: alice@a.test\nmailer: a.test\nmessage-id: urn:uuid:00000000-0000-4000-8000-000000000001\n\nABORT\n');
  const pairs = 60_000; // answers well past all the slack between the two TLS sockets
  const writing = (async () => {
    for (let i = 0; i < pairs; i++) if (!client.write(mail)) await once(client, 'drain');
    return 'wrote everything';
  })();
  const first = await Promise.race([writing, blocked.then(() => 'server waits for the peer to read')]);
  assert.equal(first, 'server waits for the peer to read', `the server read all ${pairs} commands; ${maxBuffered} bytes of answers buffered`);
  assert.ok(serverSocket.writableLength <= REPLY_BUFFER + 1024, `${serverSocket.writableLength} bytes of answers buffered`);
  // Once the peer reads, everything goes on: every command answered.
  let accepts = 0;
  let text = '';
  client.on('data', (d: Buffer) => {
    text += d.toString('latin1');
    const lines = text.split('\n');
    text = lines.pop()!;
    accepts += lines.filter((l) => l === 'ACCEPT').length;
  });
  client.resume();
  await writing;
  client.end('DONE\n');
  await once(client, 'close');
  await served;
  assert.equal(accepts, pairs);
  assert.ok(maxBuffered <= REPLY_BUFFER + 1024, `at most ${maxBuffered} bytes of answers were ever buffered`);
});
