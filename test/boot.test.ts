import assert from 'node:assert/strict';
import { cpSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { buildIdOf, cacheHeader, lazyModule, readCache } from '../src/boot.js';
import { ROOT, runCommand, tempDir, testEnv } from './helpers.js';

const BUNDLE = join(ROOT, 'dist', 'bundle');

/** A copy of the installed layout (bin/, dist/bundle/, package.json, node_modules) whose bundle a test may change. */
function install(withCaches = true): string {
  const root = tempDir('ima-boot-');
  cpSync(join(ROOT, 'bin'), join(root, 'bin'), { recursive: true });
  mkdirSync(join(root, 'dist'));
  cpSync(BUNDLE, join(root, 'dist', 'bundle'), { recursive: true, filter: (f) => withCaches || !f.endsWith('.cache') });
  cpSync(join(ROOT, 'package.json'), join(root, 'package.json'));
  symlinkSync(join(ROOT, 'node_modules'), join(root, 'node_modules'));
  return root;
}

/** In a fresh node: load `root`'s bundle as bin/NAME does, and say what was read and whether V8 took each cache. */
async function probe(root: string, programs: string[] = []): Promise<{ core: boolean; vendor: boolean | null; buildId: string }> {
  const script = `
    const { loadBundle } = require(${JSON.stringify(join(root, 'dist', 'bundle', 'boot.cjs'))});
    const b = loadBundle(${JSON.stringify(join(root, 'dist', 'bundle'))});
    (async () => {
      for (const p of ${JSON.stringify(programs)}) await b.core.exports.loadProgram(p);
      const v = b.vendor();
      console.log(JSON.stringify({ core: b.core.cacheUsed, vendor: v ? v.cacheUsed : null, buildId: b.core.buildId }));
    })();`;
  const r = await runCommand(process.execPath, ['-e', script], { env: testEnv() });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout.toString()) as { core: boolean; vendor: boolean | null; buildId: string };
}

/** Exit code, stdout and stderr of bin/NAME in an installed copy. */
async function outcome(root: string, name: string, args: string[], input?: Buffer): Promise<string> {
  const r = await runCommand(join(root, 'bin', name), args, { env: testEnv({ PATH: `${join(root, 'bin')}:${process.env.PATH}` }), input, cwd: root });
  return `${r.code}\n${r.stdout.toString().replaceAll(root, 'ROOT')}\n${r.stderr.replaceAll(root, 'ROOT')}`;
}

describe('boot', () => {
  it('the build leaves a code cache beside each bundle file, and V8 takes it', async () => {
    const files = readdirSync(BUNDLE).sort();
    assert.deepEqual(files, ['boot.cjs', 'ima.cjs', 'ima.cjs.cache', 'vendor.cjs', 'vendor.cjs.cache']);
    const got = await probe(ROOT, ['smtp-receive']);
    assert.deepEqual([got.core, got.vendor], [true, true]);
  });

  it('give-recipient and handle-incoming-mail start without reading the big packages (vendor.cjs)', async () => {
    const got = await probe(ROOT, ['give-recipient', 'handle-incoming-mail']);
    assert.equal(got.vendor, null);
  });

  it('a rebuilt bundle ignores the old cache and runs the new code', async () => {
    const root = install();
    const file = join(root, 'dist', 'bundle', 'ima.cjs');
    const old = readFileSync(file, 'latin1');
    // The same length, so that only the build mark tells the two apart (V8 checks the length alone).
    const body = old.slice(old.indexOf('\n') + 1).replace('configuration OK', 'configuration OX');
    assert.notEqual(body, old.slice(old.indexOf('\n') + 1));
    const { createHash } = createRequire(import.meta.url)('node:crypto') as typeof import('node:crypto');
    writeFileSync(file, `//ima-build:${createHash('sha256').update(body, 'latin1').digest('hex')}\n${body}`, 'latin1');
    // Older than the cache, as after an install from a package: only the build mark differs.
    const cacheTime = statSync(`${file}.cache`).mtime;
    utimesSync(file, cacheTime, new Date(cacheTime.getTime() - 1000));
    const got = await probe(root);
    assert.equal(got.core, false, 'the cache of the old build was used');
    assert.match(await outcome(root, 'give-recipient', ['--check-config']), /configuration OX/);
  });

  it('a bundle file edited by hand after its cache was made (the same length and build mark) runs its new code', async () => {
    const root = install();
    const file = join(root, 'dist', 'bundle', 'ima.cjs');
    const old = readFileSync(file, 'latin1');
    const edited = old.replace('configuration OK', 'configuration OX');
    assert.equal(edited.length, old.length);
    writeFileSync(file, edited, 'latin1');
    const later = new Date(statSync(`${file}.cache`).mtimeMs + 1000);
    utimesSync(file, later, later);
    assert.equal((await probe(root)).core, false, 'the cache of the unedited file was used');
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

  it('a lazy module stand-in answers as the module does, and loads it only when asked', () => {
    let loads = 0;
    const real = createRequire(import.meta.url)('node:path') as typeof import('node:path');
    const lazy = lazyModule(() => (loads++, real)) as typeof real;
    assert.equal(loads, 0);
    assert.equal(lazy.join('a', 'b'), real.join('a', 'b'));
    assert.equal('join' in lazy, true);
    assert.deepEqual(Object.keys(lazy).sort(), Object.keys(real).sort());
    assert.equal(Object.getOwnPropertyDescriptor(lazy, 'sep')?.value, real.sep);
    assert.equal(loads, 1);
  });
});
