// Stand-ins the bundle puts in place of two modules mailparser loads at
// start-up for work the toolkit turns off (skipHtmlToText, skipTextToHtml,
// skipTextLinks in to-ima.ts): html-to-text and linkify-it. A profile of
// mime-to-ima's start put them near a third of its module loading; the real
// modules now load on first use only. The bundle script maps the package
// names here (esbuild --alias); tsc's unbundled build uses the real ones.
import { createRequire } from 'node:module';

/** require() as mailparser sees it, so its own copies are found wherever npm put them. */
function mailparserRequire(): NodeJS.Require {
  return createRequire(createRequire(import.meta.url).resolve('mailparser'));
}

type HtmlToText = (html: string, options?: unknown) => string;
let html: { htmlToText: HtmlToText; convert: HtmlToText } | undefined;

export const htmlToText: HtmlToText = (h, o) => (html ??= mailparserRequire()('html-to-text') as typeof html & object).htmlToText(h, o);
export const convert = htmlToText;

/**
 * linkify-it's factory: the set-up calls (tlds, add, set) are recorded, and
 * the real instance is built and the calls replayed when anything else is
 * asked of it.
 */
export default function linkifyIt(...args: unknown[]): unknown {
  const recorded: [string, unknown[]][] = [];
  let real: Record<string, unknown> | undefined;
  const materialize = () => {
    if (!real) {
      real = (mailparserRequire()('linkify-it') as (...a: unknown[]) => Record<string, unknown>)(...args);
      for (const [m, a] of recorded) (real[m] as (...x: unknown[]) => unknown)(...a);
    }
    return real;
  };
  const proxy: unknown = new Proxy(
    {},
    {
      get(_t, prop) {
        if (!real && typeof prop === 'string' && ['tlds', 'add', 'set'].includes(prop)) {
          return (...a: unknown[]) => {
            recorded.push([prop, a]);
            return proxy;
          };
        }
        const r = materialize();
        const v = r[prop as string];
        return typeof v === 'function' ? (v as (...x: unknown[]) => unknown).bind(r) : v;
      },
    },
  );
  return proxy;
}
