import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { test } from 'node:test';
import linkifyIt, { htmlToText } from '../../src/mime/lazy.js';
import { ROOT } from '../helpers.js';

interface Linkify {
  tlds(t: string, keep: boolean): Linkify;
  add(schema: string, def: string | null): Linkify;
  set(o: object): Linkify;
  pretest(s: string): boolean;
  match(s: string): unknown;
}
// The real modules, untyped, as mailparser loads them.
const load = createRequire(createRequire(import.meta.url).resolve('mailparser'));

test('lazy: the linkify-it stand-in records set-up calls and answers like the real one once asked', () => {
  const real = (load('linkify-it') as () => Linkify)();
  const lazy = linkifyIt() as Linkify;
  for (const l of [real, lazy]) l.tlds('onion', true).add('git:', 'http:').add('ftp:', null).set({ fuzzyIP: true });
  const text = 'see git://x.onion/a and 10.1.2.3 or ftp://old.test, mail bob@b.test';
  assert.equal(lazy.pretest(text), real.pretest(text));
  assert.deepEqual(JSON.parse(JSON.stringify(lazy.match(text))), JSON.parse(JSON.stringify(real.match(text))));
});

test('lazy: the html-to-text stand-in converts like the real one', () => {
  const real = (load('html-to-text') as { htmlToText: (h: string, o: object) => string }).htmlToText;
  const html = '<p>Hello <b>Bob</b></p><ul><li>one</li></ul>';
  assert.equal(htmlToText(html, {}), real(html, {}));
});

test('lazy: the bundle carries the stand-ins, not html-to-text or linkify-it', () => {
  const dir = join(ROOT, 'dist', 'bundle');
  const all = readdirSync(dir)
    .map((f) => readFileSync(join(dir, f), 'utf8'))
    .join('\n');
  assert.doesNotMatch(all, /node_modules\/(html-to-text|linkify-it|htmlparser2)\//);
  assert.match(all, /src\/mime\/lazy\.js/);
});
