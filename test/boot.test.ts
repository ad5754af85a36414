import assert from 'node:assert/strict';
import { cpSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { basename, join } from 'node:path';
import { describe, it } from 'node:test';
import { CHECK_CACHE, buildIdOf, cacheHeader, lazyModule, readCache } from '../src/boot.js';
import { ROOT, runCommand, tempDir, testEnv } from './helpers.js';

const BUNDLE = join(ROOT, 'dist', 'bundle');

/** A copy of the installed layout (bin/, dist/bundle/, package.json, node_modules) whose bundle a test may change. */
function install(withCaches = true): string {
  const root = tempDir('ima-boot-');
  cpSync(join(ROOT, 'bin'), join(root, 'bin'), { recursive: true });
  mkdirSync(join(root, 'dist'));
  // Times kept: a bundle file copied after its cache would be newer than it, and its cache not used.
  cpSync(BUNDLE, join(root, 'dist', 'bundle'), { recursive: true, preserveTimestamps: true, filter: (f) => withCaches || !f.endsWith('.cache') });
  cpSync(join(ROOT, 'package.json'), join(root, 'package.json'));
  symlinkSync(join(ROOT, 'node_modules'), join(root, 'node_modules'));
  return root;
}

interface Probe {
  /** V8 took ima.cjs's cache. */
  core: boolean;
  /** Every chunk read, and whether V8 took its cache. */
  units: Record<string, boolean>;
  /** The bundle files read. */
  files: string[];
  /** The packages (node_modules/NAME) the chunks read hold, as the build lists them at each chunk's top. */
  packages: string[];
  buildId: string;
}

/** In a fresh node: load `root`'s bundle as bin/NAME does, `programs` and the chunks `chunks`-HASH; say what was read and whether V8 took each cache. */
async function probe(root: string, programs: string[] = [], chunks: string[] = []): Promise<Probe> {
  const script = `
    const { loadBundle } = require(${JSON.stringify(join(root, 'dist', 'bundle', 'boot.cjs'))});
    const { readFileSync } = require('node:fs');
    const b = loadBundle(${JSON.stringify(join(root, 'dist', 'bundle'))});
    (async () => {
      for (const p of ${JSON.stringify(programs)}) await b.core.exports.loadProgram(p);
      const dir = ${JSON.stringify(join(root, 'dist', 'bundle'))};
      for (const c of ${JSON.stringify(chunks)}) b.unit(require('node:fs').readdirSync(dir).find((f) => f.startsWith(c + '-') && f.endsWith('.cjs')));
      const units = {};
      const packages = new Set();
      const files = new Set();
      for (const [name, u] of b.units) {
        files.add(require('node:path').basename(u.file));
        units[name] = u.cacheUsed;
        for (const m of readFileSync(u.file, 'latin1').matchAll(/^[/][/] node_modules[/]((?:@[^/]+[/])?[^/]+)[/]/gm)) packages.add(m[1]);
      }
      console.log(JSON.stringify({ core: b.core.cacheUsed, units, files: [...files].sort(), packages: [...packages].sort(), buildId: b.core.buildId }));
    })();`;
  const r = await runCommand(process.execPath, ['-e', script], { env: testEnv() });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout.toString()) as Probe;
}

/** The bundle file of an installed copy that holds `text`. */
function chunkWith(root: string, text: string): string {
  const dir = join(root, 'dist', 'bundle');
  const hits = readdirSync(dir).filter((f) => f.endsWith('.cjs') && readFileSync(join(dir, f), 'latin1').includes(text));
  assert.equal(hits.length, 1, `${text} in ${hits.join(' ')}`);
  return join(dir, hits[0]);
}

/** Exit code, stdout and stderr of bin/NAME in an installed copy. */
async function outcome(root: string, name: string, args: string[], input?: Buffer): Promise<string> {
  const r = await runCommand(join(root, 'bin', name), args, { env: testEnv({ PATH: `${join(root, 'bin')}:${process.env.PATH}` }), input, cwd: root });
  return `${r.code}\n${r.stdout.toString().replaceAll(root, 'ROOT')}\n${r.stderr.replaceAll(root, 'ROOT')}`;
}

describe('boot', () => {
  it('the build leaves a code cache beside each bundle file, and V8 takes it', async () => {
    const files = readdirSync(BUNDLE);
    const code = files.filter((f) => f.endsWith('.cjs') && f !== 'boot.cjs');
    assert.ok(code.includes('ima.cjs'));
    assert.deepEqual(files.filter((f) => f.endsWith('.cache')).sort(), [...code.map((f) => `${f}.cache`), CHECK_CACHE].sort());
    const got = await probe(ROOT, ['smtp-receive', 'give-recipient']);
    assert.ok(Object.keys(got.units).length > 2);
    assert.deepEqual(
      Object.entries(got.units).filter(([, used]) => !used),
      [],
    );
  });

  // The big packages: each read only by a program that imports it (yargs: --help and usage errors only).
  const BIG = ['yargs', 'mailauth', 'nodemailer', 'mailparser', '@zone-eu/mailsplit', 'iconv-lite', 'node-forge', 'smtp-server'];

  it('give-recipient and handle-incoming-mail start reading one bundle file, without the big packages', async () => {
    const got = await probe(ROOT, ['give-recipient', 'handle-incoming-mail']);
    assert.deepEqual(got.files, ['ima.cjs']);
    assert.deepEqual(
      got.packages.filter((p) => BIG.includes(p)),
      [],
    );
  });

  it('a program reads only the packages it uses: mime-to-ima no certificate, SMTP or DKIM code; make-cert no MIME code', async () => {
    const mime = await probe(ROOT, ['mime-to-ima']);
    assert.ok(mime.packages.includes('mailparser'), mime.packages.join(' '));
    for (const p of ['mailauth', 'node-forge', 'smtp-server', 'yargs']) assert.ok(!mime.packages.includes(p), `mime-to-ima reads ${p}`);
    const cert = await probe(ROOT, ['make-cert']);
    assert.ok(cert.packages.includes('node-forge'), cert.packages.join(' '));
    for (const p of ['mailparser', 'mailauth', 'nodemailer', 'smtp-server']) assert.ok(!cert.packages.includes(p), `make-cert reads ${p}`);
  });

  it("a conversion loads no network module: nodemailer's imports of net, http, https and zlib stay stand-ins", async () => {
    // A preload that says at exit which of Node's modules the process loaded.
    const dir = tempDir();
    const preload = join(dir, 'loaded.cjs');
    writeFileSync(preload, "process.on('exit', () => require('node:fs').writeSync(2, '\\nLOADED ' + process.moduleLoadList.join(',')));\n");
    const made = await runCommand(join(ROOT, 'bin', 'make-message'), ['-r', 'alice@a.test', '--text', 'Hi\n', 'bob@b.test'], { env: testEnv() });
    assert.equal(made.code, 0, made.stderr);
    const toMime = await runCommand(process.execPath, ['-r', preload, join(ROOT, 'bin', 'ima-to-mime')], { env: testEnv(), input: made.stdout });
    const toIma = await runCommand(process.execPath, ['-r', preload, join(ROOT, 'bin', 'mime-to-ima')], { env: testEnv(), input: toMime.stdout });
    for (const [name, r] of Object.entries({ 'ima-to-mime': toMime, 'mime-to-ima': toIma })) {
      assert.equal(r.code, 0, r.stderr);
      const loaded = /LOADED (.*)$/.exec(r.stderr)![1].split(',');
      for (const m of ['net', 'http', 'https', 'zlib', 'tls']) assert.ok(!loaded.includes(`NativeModule ${m}`), `${name} loaded ${m}`);
    }
  });

  it("a recipient check starts from the pack's smaller check cache; a delivery, and a check without it, from the whole one", async () => {
    // A preload that says at exit which scripts boot.cjs compiled, with how many bytes of cache each was offered and whether V8 took them.
    const dir = tempDir();
    const spy = join(dir, 'spy.cjs');
    writeFileSync(
      spy,
      `const vm = require('node:vm'); const seen = [];
      vm.Script = class extends vm.Script { constructor(code, o) { super(code, o); seen.push([require('node:path').basename(o.filename), o.cachedData ? o.cachedData.length : 0, !this.cachedDataRejected]); } };
      process.on('exit', () => require('node:fs').writeSync(2, '\\nSCRIPTS ' + JSON.stringify(seen)));\n`,
    );
    const root = install();
    const bundle = join(root, 'dist', 'bundle');
    const cfg = join(dir, 'him.toml');
    for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(dir, 'box', f), { recursive: true });
    writeFileSync(cfg, `[domains."b.test"]\ncommand = ["give-recipient", "--address", "{address}", ${JSON.stringify(join(dir, 'box'))}]\n`);
    const msg = await runCommand(join(ROOT, 'bin', 'make-message'), ['-r', 'alice@a.test', '--text', 'Hi\n', 'bob@b.test'], { env: testEnv() });
    const offered = async (args: string[]) => {
      const r = await runCommand(process.execPath, ['-r', spy, join(root, 'bin', 'handle-incoming-mail'), '--config', cfg, ...args], {
        env: testEnv(),
        input: msg.stdout,
      });
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout.toString(), /^OK bob@b\.test$/m);
      const [pack] = (JSON.parse(/SCRIPTS (.*)$/.exec(r.stderr)![1]) as [string, number, boolean][]).filter(([f]) => f === 'ima.cjs');
      assert.ok(pack[2], 'V8 rejected the cache');
      return pack[1];
    };
    // A cache file is its header line, then what V8 is given.
    const size = (f: string) => {
      const data = readFileSync(join(bundle, f));
      return data.length - data.indexOf('\n') - 1;
    };
    assert.ok(size(CHECK_CACHE) < size('ima.cjs.cache') * 0.9, `${size(CHECK_CACHE)} against ${size('ima.cjs.cache')}`);
    assert.equal(await offered(['--check']), size(CHECK_CACHE));
    assert.equal(await offered([]), size('ima.cjs.cache'));
    rmSync(join(bundle, CHECK_CACHE));
    assert.equal(await offered(['--check']), size('ima.cjs.cache'));
  });

  it('a rebuilt bundle ignores the old cache and runs the new code', async () => {
    const root = install();
    const file = chunkWith(root, 'configuration OK');
    const old = readFileSync(file, 'latin1');
    // The same length, so that only the build mark tells the two apart (V8 checks the length alone).
    const body = old.slice(old.indexOf('\n') + 1).replace('configuration OK', 'configuration OX');
    assert.notEqual(body, old.slice(old.indexOf('\n') + 1));
    const { createHash } = createRequire(import.meta.url)('node:crypto') as typeof import('node:crypto');
    writeFileSync(file, `//ima-build:${createHash('sha256').update(body, 'latin1').digest('hex')}\n${body}`, 'latin1');
    // Older than the cache, as after an install from a package: only the build mark differs.
    const cacheTime = statSync(`${file}.cache`).mtime;
    utimesSync(file, cacheTime, new Date(cacheTime.getTime() - 1000));
    const got = await probe(root, ['give-recipient']);
    assert.equal(got.units[basename(file)], false, 'the cache of the old build was used');
    assert.match(await outcome(root, 'give-recipient', ['--check-config']), /configuration OX/);
  });

  it('a bundle file edited by hand after its cache was made (the same length and build mark) runs its new code', async () => {
    const root = install();
    const file = chunkWith(root, 'configuration OK');
    const old = readFileSync(file, 'latin1');
    const edited = old.replace('configuration OK', 'configuration OX');
    assert.equal(edited.length, old.length);
    writeFileSync(file, edited, 'latin1');
    const later = new Date(statSync(`${file}.cache`).mtimeMs + 1000);
    utimesSync(file, later, later);
    assert.equal((await probe(root, ['give-recipient'])).units[basename(file)], false, 'the cache of the unedited file was used');
    assert.match(await outcome(root, 'give-recipient', ['--check-config']), /configuration OX/);
  });

  it('a cache made for another build or another Node is not offered to V8', () => {
    const dir = tempDir();
    const f = join(dir, 'x.cache');
    writeFileSync(f, Buffer.concat([Buffer.from(cacheHeader('abc'), 'latin1'), Buffer.from('data')]));
    assert.equal(readCache(f, 'abc')?.toString(), 'data');
    assert.equal(readCache(f, 'abd'), undefined);
    assert.equal(readCache(f, undefined), undefined);
    writeFileSync(f, `ima-code-cache/1 abc v0.0.1 ${process.arch}\ndata`);
    assert.equal(readCache(f, 'abc'), undefined);
    assert.equal(readCache(join(dir, 'missing'), 'abc'), undefined);
    assert.equal(buildIdOf('//ima-build:abc\ncode'), 'abc');
    assert.equal(buildIdOf('code'), undefined);
  });

  it('a cache V8 rejects (a damaged file) is ignored: the program runs as without one', async () => {
    const root = install();
    const cache = join(root, 'dist', 'bundle', 'ima.cjs.cache');
    const data = readFileSync(cache);
    rmSync(cache);
    const at = data.indexOf('\n') + 1;
    data.writeUInt32LE((data.readUInt32LE(at + 4) ^ 0xffffffff) >>> 0, at + 4); // our header right, V8's version hash wrong
    writeFileSync(cache, data);
    const got = await probe(root);
    assert.equal(got.core, false);
    assert.match(await outcome(root, 'give-recipient', ['--version']), /^0\n\d+\.\d+\.\d+/);
  });

  it('programs answer the same with and without the caches', async () => {
    const cached = install(true);
    const plain = install(false);
    assert.equal((await probe(plain)).core, false);
    const box = (root: string) => {
      for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(root, 'box', f), { recursive: true });
      return 'box';
    };
    const msg = await runCommand(join(ROOT, 'bin', 'make-message'), ['-r', 'alice@a.test', '--text', 'Hello\n', 'bob@b.test'], { env: testEnv() });
    assert.equal(msg.code, 0, msg.stderr);
    const runs: [string, string[], Buffer?][] = [
      ['give-recipient', ['--version']],
      ['give-recipient', ['--help']],
      ['give-recipient', ['--bogus']],
      ['give-recipient', ['--check-config']],
      ['give-recipient', ['--address', 'bob@b.test', 'box'], msg.stdout],
      ['give-recipient', ['--address', 'bob@b.test', 'box'], Buffer.from('not a message')],
      ['handle-incoming-mail', ['--check', '--recipient', 'bob@b.test']],
      ['mime-to-ima', ['--version']],
      ['make-cert', ['--bogus']],
    ];
    for (const [name, args, input] of runs) {
      box(cached);
      box(plain);
      assert.equal(await outcome(cached, name, args, input), await outcome(plain, name, args, input), `${name} ${args.join(' ')}`);
    }
  });

  it("mailauth's chunk carries stand-ins for its BIMI packages, not undici, @postalsys/vmc, asn1js or fast-xml-parser", async () => {
    const got = await probe(ROOT, [], ['mailauth']);
    assert.ok(got.packages.includes('mailauth'), got.packages.join(' '));
    for (const p of ['undici', '@postalsys/vmc', 'asn1js', 'fast-xml-parser']) assert.ok(!got.packages.includes(p), `the mailauth chunk holds ${p}`);
  });

  it('the BIMI stand-ins answer as the real packages: a fetch through a stand-in Agent, an XML parse, a VMC check', async () => {
    const standIns = createRequire(import.meta.url)(join(ROOT, 'scripts', 'stand-ins.cjs')) as Record<string, (from: string) => Record<string, unknown>>;
    const from = join(ROOT, 'package.json');
    const real = createRequire(createRequire(from).resolve('mailauth'));
    // undici: over a real connection to a local server.
    const server = createServer((_req, res) => res.writeHead(200, { connection: 'close' }).end('logo'));
    await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
    try {
      const { fetch, Agent } = standIns.undici(from) as { fetch: typeof globalThis.fetch; Agent: new (o: object) => object };
      const res = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`, {
        dispatcher: new Agent({ connect: { timeout: 5000 } }),
      } as RequestInit);
      assert.equal(res.status, 200);
      assert.equal(await res.text(), 'logo');
    } finally {
      server.closeAllConnections();
      server.close();
    }
    // fast-xml-parser
    const svg = '<svg version="1.2" baseProfile="tiny-ps"><title>x</title></svg>';
    const { XMLParser } = standIns.xml(from) as { XMLParser: new (o: object) => { parse(x: string): unknown } };
    const Real = (real('fast-xml-parser') as { XMLParser: new (o: object) => { parse(x: string): unknown } }).XMLParser;
    assert.deepEqual(new XMLParser({ ignoreAttributes: false }).parse(svg), new Real({ ignoreAttributes: false }).parse(svg));
    // @postalsys/vmc: the same answer to a certificate bundle that is none.
    const { vmc } = standIns.vmc(from) as { vmc: (b: Buffer, o: object) => Promise<unknown> };
    const realVmc = (real('@postalsys/vmc') as { vmc: (b: Buffer, o: object) => Promise<unknown> }).vmc;
    const outcome = (p: Promise<unknown>) =>
      p.then(
        (v) => JSON.stringify(v),
        (e: Error) => `error: ${e.message}`,
      );
    assert.equal(await outcome(vmc(Buffer.from('not a certificate'), {})), await outcome(realVmc(Buffer.from('not a certificate'), {})));
  });

  it('libmime in the bundle builds no GBK code table at load, and mime-to-ima still decodes GB2312 and Latin-1', async () => {
    const chunks = readdirSync(BUNDLE).filter((f) => f.endsWith('.cjs'));
    const charset = chunks.filter((f) => readFileSync(join(BUNDLE, f), 'latin1').includes('// node_modules/libmime/dist/cjs/charset.js'));
    assert.ok(charset.length > 0);
    for (const f of charset) assert.doesNotMatch(readFileSync(join(BUNDLE, f), 'latin1'), /getCodec\(["']gbk["']\)/, f);
    const mime = (charset: string, body: Buffer) =>
      Buffer.concat([
        Buffer.from(
          `From: a@b.test\r\nTo: c@b.test\r\nSubject: x\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <${charset}@b.test>\r\n` +
            `MIME-Version: 1.0\r\nContent-Type: text/plain; charset=${charset}\r\nContent-Transfer-Encoding: 8bit\r\n\r\n`,
        ),
        body,
        Buffer.from('\r\n'),
      ]);
    for (const [charset, body, text] of [
      ['gb2312', Buffer.from([0xc4, 0xe3, 0xba, 0xc3]), '\u4f60\u597d'],
      ['iso-8859-1', Buffer.from([0x47, 0x72, 0xfc, 0xdf, 0x65]), 'Gr\u00fc\u00dfe'],
    ] as const) {
      const r = await runCommand(join(ROOT, 'bin', 'mime-to-ima'), [], { env: testEnv(), input: mime(charset, body) });
      assert.equal(r.code, 0, r.stderr);
      assert.ok(r.stdout.toString('utf8').includes(text), `${charset}: ${text} not in the message`);
    }
  });

  it('a lazy module stand-in answers as the module does, and loads it only when asked', () => {
    let loads = 0;
    const real = createRequire(import.meta.url)('node:path') as typeof import('node:path');
    const lazy = lazyModule(() => (loads++, real)) as typeof real;
    assert.equal(loads, 0);
    assert.equal(lazy.join('a', 'b'), real.join('a', 'b'));
    assert.equal('join' in lazy, true);
    assert.deepEqual(Object.keys(lazy).sort(), Object.keys(real).sort());
    assert.equal(Object.getOwnPropertyDescriptor(lazy, 'sep')?.value, real.sep);
    // What esbuild's default import reads: the module itself.
    assert.equal((lazy as unknown as { default: unknown }).default, real);
    assert.equal(loads, 1);
  });
});
