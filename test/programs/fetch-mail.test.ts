// fetch-mail against scripted IMRP servers (real TLS on loopback): what a
// hostile or odd server sends, and what fetch-mail keeps of it.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { existsSync, mkdirSync, readFileSync, readdirSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { type Server, type TLSSocket, createServer } from 'node:tls';
import { runBin, tempDir, testEnv } from '../helpers.js';
import { Pki } from '../pki.js';
import { HEADERS, entry, header, tarOf } from '../tarbuild.js';

const dir = tempDir('ima-fetch-');
const pki = new Pki(dir);
const cert = pki.server('b.test');
const servers: Server[] = [];
after(() => servers.forEach((s) => s.close()));

const ID = /message-id: urn:uuid:(\S+)/.exec(HEADERS)![1];
const withId = (id: string) => HEADERS.replace(ID, id);

interface Script {
  /** Answers FETCH NEW: writes MESSAGE lines and data, then (if it returns true) "OK n". */
  fetch(s: TLSSocket): Promise<boolean> | boolean;
  /** Every DELETE or SEEN line heard. */
  acks?: string[];
}

/** A scripted post-office: greets, takes any login, answers LIST new with nothing, FETCH NEW by the script. */
async function scripted(script: Script): Promise<number> {
  const srv = createServer({ cert: readFileSync(cert.cert), key: readFileSync(cert.key) }, (s) => {
    s.on('error', () => {});
    s.write('IMRP 1 scripted\n');
    let buf = '';
    s.on('data', (d) => {
      buf += d;
      for (let lf = buf.indexOf('\n'); lf !== -1; lf = buf.indexOf('\n')) {
        const line = buf.slice(0, lf);
        buf = buf.slice(lf + 1);
        if (line.startsWith('LOGIN')) s.write('OK logged in\n');
        else if (line === 'LIST new') s.write('OK 0\n');
        else if (line === 'FETCH NEW') void Promise.resolve(script.fetch(s)).then((done) => done && s.write('OK\n'));
        else if (/^(DELETE|SEEN) /.test(line)) {
          script.acks?.push(line);
          s.write(`OK ${line.split(' ').length - 1}\n`);
        } else if (line === 'FOLDERS') s.write('FOLDER new 0\nFOLDER cur 0\nOK\n');
        else if (line === 'QUIT') s.end('BYE bye\n');
      }
    });
  });
  servers.push(srv);
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  return (srv.address() as { port: number }).port;
}

function configFor(port: number, extra = ''): string {
  const f = join(dir, `fetch-${port}.toml`);
  writeFileSync(f, `server = "127.0.0.1"\nserver_name = "b.test"\nport = ${port}\nca = ["${pki.caFile}"]\nuser = "bob"\n${extra}`);
  return f;
}

const fetch = (port: number, box: string, args: string[] = [], extra = '') =>
  runBin('fetch-mail', ['--config', configFor(port, extra), box, ...args], { env: testEnv({ IMA_PASSWORD: 'x' }) });
const local = (box: string) => (existsSync(join(box, 'new')) ? readdirSync(join(box, 'new')).sort() : []);

function drainedOrClosed(s: TLSSocket): Promise<void> {
  return new Promise((res) => {
    const go = () => {
      s.off('drain', go);
      s.off('close', go);
      res();
    };
    s.on('drain', go);
    s.on('close', go);
  });
}

/** Send messages one after the other: [announced id, tar]. */
const sending =
  (msgs: [string, Buffer][]) =>
  (s: TLSSocket): boolean => {
    for (const [id, tar] of msgs) s.write(Buffer.concat([Buffer.from(`MESSAGE ${id} ${tar.length}\n`), tar]));
    return true;
  };

describe('fetch-mail against a scripted server', () => {
  it('writes nothing outside DIR for traversal names and links, and leaves those messages on the server', async () => {
    const ids = ['123456789abc', '123456789abd', '123456789abe'].map((n) => `12345678-1234-4234-8234-${n}`);
    const port = await scripted({
      fetch: sending([
        [ids[0], tarOf(entry('headers', withId(ids[0])), entry('attachments/../../../escape.txt', 'pwned'))],
        [ids[1], tarOf(entry('headers', withId(ids[1])), header({ name: 'attachments/link', type: '2', linkname: '/etc/passwd' }))],
        [ids[2], tarOf(entry('headers', withId(ids[2])), entry('../escape2.txt', 'pwned'))],
      ]),
    });
    const root = join(dir, 'victim');
    mkdirSync(root);
    const r = await fetch(port, join(root, 'box'));
    assert.equal(r.code, 1, r.stderr);
    assert.equal((r.stderr.match(/refused and left on the server/g) ?? []).length, 3);
    assert.deepEqual(readdirSync(root), ['box']);
    assert.deepEqual(local(join(root, 'box')), []);
    assert.equal(existsSync(join(dir, 'escape.txt')), false);
    assert.equal(existsSync(join(root, 'escape2.txt')), false);
  });

  it('refuses a message the server sends under another id before storing it, and leaves it on the server', async () => {
    const other = '12345678-1234-4234-8234-0000000000ff';
    const good = '12345678-1234-4234-8234-0000000000aa';
    const acks: string[] = [];
    const port = await scripted({
      acks,
      fetch: sending([
        [other, tarOf(entry('headers', HEADERS), entry('body', 'sent under another id\n'))],
        [good, tarOf(entry('headers', withId(good)), entry('body', 'fine\n'))],
      ]),
    });
    const box = join(dir, 'wrong-id');
    const r = await fetch(port, box);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`message ${other} refused and left on the server: message ${ID} was sent as ${other}`));
    assert.deepEqual(local(box), [good]);
    assert.deepEqual(readdirSync(join(box, 'tmp')), []);
    assert.deepEqual(acks, [`DELETE ${good}`], 'only the stored message is deleted on the server');
  });

  it("keeps the user's own bcc line that the server sent (the server already kept the others private)", async () => {
    const id = '12345678-1234-4234-8234-0000000000bc';
    const port = await scripted({ fetch: sending([[id, tarOf(entry('headers', `${withId(id)}bcc: bob@b.test\n`), entry('body', 'hi\n'))]]) });
    const box = join(dir, 'bcc');
    const r = await fetch(port, box);
    assert.equal(r.code, 0, r.stderr);
    assert.match(readFileSync(join(box, 'new', id, 'headers'), 'utf8'), /^bcc: bob@b\.test$/m);
  });

  it('removes what killed runs left in tmp/ when it starts, and nothing recent', async () => {
    const box = join(dir, 'stale');
    for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(box, f), { recursive: true });
    const old = join(box, 'tmp', '1.killed.abc');
    mkdirSync(old);
    writeFileSync(join(old, 'headers'), 'half');
    const longAgo = new Date(Date.now() - 48 * 3600 * 1000);
    utimesSync(old, longAgo, longAgo);
    mkdirSync(join(box, 'tmp', '2.in-progress.def'));
    const port = await scripted({ fetch: sending([]) });
    const r = await fetch(port, box);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(readdirSync(join(box, 'tmp')), ['2.in-progress.def']);
  });

  it('stops reading a tar bomb (2 million empty entries) at max_entries, far before its end', async () => {
    const id = '12345678-1234-4234-8234-00000000b0b0';
    const entries = 2_000_000;
    const head = entry('headers', withId(id));
    const size = head.length + entries * 512 + 1024;
    let written = 0;
    let closed = false;
    const good = '12345678-1234-4234-8234-00000000600d';
    const goodTar = tarOf(entry('headers', withId(good)), entry('body', 'before the bomb\n'));
    const acks: string[] = [];
    const port = await scripted({
      acks,
      fetch: async (s) => {
        s.on('close', () => (closed = true));
        s.write(`MESSAGE ${good} ${goodTar.length}\n`);
        s.write(goodTar);
        s.write(`MESSAGE ${id} ${size}\n`);
        s.write(head);
        // Entries in batches, with backpressure: what was written is what fetch-mail read (give or take the socket buffers).
        let n = 0;
        while (!closed && written < size - 1024 - head.length) {
          const batch = Buffer.concat(Array.from({ length: 256 }, () => entry(`attachments/${n++}`, '')));
          written += batch.length;
          if (!s.write(batch)) await drainedOrClosed(s);
        }
        return false;
      },
    });
    const box = join(dir, 'bomb');
    const r = await fetch(port, box);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`message ${id} refused and left on the server: message has more than 1000 entries`));
    assert.ok(written < 64 * 1024 * 1024, `read ${written} of ${size} bytes before refusing`);
    assert.deepEqual(local(box), [good]);
    assert.deepEqual(acks, [`DELETE ${good}`], 'the message stored before the bomb is deleted on the server, over a new connection');
  });
});
