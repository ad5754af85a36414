// Fixtures for IMDP tests: a PKI for a.test and b.test, server-receive as a
// real process on 127.0.0.1 port 0 with a config written here, handler
// scripts with a chosen behaviour, messages, and a client.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after } from 'node:test';
import { ImdpClient } from '../src/imdp/client.js';
import { Headers, writeMessage } from '../src/message/index.js';
import { type Listening, startListening, tempDir } from './helpers.js';
import { type CertFiles, Pki } from './pki.js';

export const dir = tempDir('ima-imdp-');
export const pki = new Pki(dir);
export const certs = { a: pki.server('a.test'), b: pki.server('b.test'), c: pki.server('c.test') };

/**
 * A handler: saves stdin to OUT/<n>.ima, prints a line per recipient-ish
 * argument, exits with CODE. Modes: "ok", "exit:N", "crash" (killed after
 * reading).
 */
export const HANDLER = join(dir, 'handler.mjs');
writeFileSync(
  HANDLER,
  `import { createWriteStream, readdirSync, writeFileSync } from 'node:fs';
const [mode, out] = process.argv.slice(2);
const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const n = readdirSync(out).filter((f) => f.endsWith('.ima')).length;
writeFileSync(out + '/' + n + '.ima', Buffer.concat(chunks));
writeFileSync(out + '/' + n + '.env', JSON.stringify(Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('IMA_')))));
if (mode === 'crash') { console.error('handler crashed'); process.kill(process.pid, 'SIGKILL'); }
console.log('OK bob@b.test');
console.log('REPLY-LIKE second line');
process.exit(mode.startsWith('exit:') ? Number(mode.slice(5)) : 0);
`,
);

export interface Server extends Listening {
  stderr: () => string;
}

export function config(opts: { domain?: string; cert?: CertFiles; handler?: string[]; check?: string[]; extra?: string; ca?: string[] } = {}): string {
  const cert = opts.cert ?? certs.b;
  return `domain = "${opts.domain ?? 'b.test'}"
handler = ${JSON.stringify(opts.handler ?? ['node', HANDLER, 'ok', dir])}
check = ${JSON.stringify(opts.check ?? [])}
[tls]
certificate = "${cert.cert}"
key = "${cert.key}"
ca = ${JSON.stringify(opts.ca ?? [pki.caFile])}
${opts.extra ?? ''}
`;
}

let configs = 0;
export async function startServer(configText: string, opts: Parameters<typeof startListening>[2] = {}): Promise<Server> {
  const file = join(dir, `server-receive-${configs++}.toml`);
  writeFileSync(file, configText);
  const s = await startListening('server-receive', ['--config', file, '--listen', '127.0.0.1:0'], opts);
  return { ...s, stderr: s.log };
}

/**
 * A starter of server-receive processes for one test file (config(...) as
 * its config): each one started is stopped after the file's tests.
 */
export function serverPool(): (...a: Parameters<typeof config>) => Promise<Server> {
  const started: Server[] = [];
  after(async () => Promise.all(started.map((s) => s.stop())));
  return async (...a) => {
    const s = await startServer(config(...a));
    started.push(s);
    return s;
  };
}

/** A fresh output directory for the handler. */
export function outDir(): string {
  return tempDir('ima-out-');
}

export async function message(fields: [string, string][], body = 'Hello Bob.\n'): Promise<Buffer> {
  const h = new Headers();
  for (const [k, v] of fields) h.add(k, v);
  const out = new PassThrough();
  const parts: Buffer[] = [];
  out.on('data', (c) => parts.push(c));
  await writeMessage(out, { headers: h, body: { size: Buffer.byteLength(body), open: () => Buffer.from(body) } });
  return Buffer.concat(parts);
}

let ids = 0;
export function basicFields(extra: [string, string][] = []): [string, string][] {
  return [
    ['from', 'alice@a.test'],
    ['to', 'bob@b.test'],
    ['subject', 'hi'],
    ['date', '2026-11-23T00:00:00Z'],
    ['message-id', `urn:uuid:00000000-0000-4000-8000-${String(++ids).padStart(12, '0')}`],
    ['mailer', 'a.test'],
    ...extra,
  ];
}

/** The headers entry of a message made by message(). */
export function headersOf(tar: Buffer): Buffer {
  const size = parseInt(tar.subarray(124, 136).toString().trim(), 8);
  return tar.subarray(512, 512 + size);
}

export function clientTls(cert: CertFiles = certs.a) {
  return { cert: readFileSync(cert.cert), key: readFileSync(cert.key), ca: [pki.ca.certPem] };
}

export function connect(port: number, cert: CertFiles = certs.a, domain = 'b.test'): Promise<ImdpClient> {
  return ImdpClient.connect({ host: '127.0.0.1', port, domain, tls: clientTls(cert), timeout: 20_000 });
}

/** Announce and, when accepted, send a message; the answer to MAIL and the final result. */
export async function deliver(c: ImdpClient, tar: Buffer, raw = headersOf(tar)) {
  c.sendMail(raw, tar.length);
  const a = await c.readAnswer();
  if (a.word !== 'ACCEPT') {
    c.sendAbort();
    return { answer: a };
  }
  await c.sendData(tar, tar.length);
  return { answer: a, result: await c.readResult() };
}
