// Stand-ins the bundle (scripts/bundle.mjs) puts in place of three packages
// mailauth loads at start for BIMI alone, the logo download and the VMC
// certificate check (mailauth's validateVMC), which the toolkit's verdicts
// (DKIM, SPF, DMARC, ARC through authenticate) never call: undici (1 MB of
// code), @postalsys/vmc (with asn1js and @peculiar, 300 KB) and
// fast-xml-parser. Loading mailauth with them cost 11 MB more peak RSS than
// without. Each stand-in loads its real package, from where mailauth would,
// at its first use, and then answers as it.
'use strict';
const { createRequire } = require('node:module');

/** require() as mailauth sees it; `from` is a file whose directory finds mailauth (the bundle chunk). */
const mailauthRequire = (from) => createRequire(createRequire(from).resolve('mailauth'));

/** undici's fetch and Agent: an Agent made here becomes a real one when a fetch first uses it as its dispatcher. */
exports.undici = (from) => {
  let real;
  const load = () => (real ??= mailauthRequire(from)('undici'));
  const REAL = Symbol('the real Agent');
  class Agent {
    constructor(...args) {
      let agent;
      this[REAL] = () => (agent ??= new (load().Agent)(...args));
    }
  }
  const fetch = (url, opts) => load().fetch(url, opts && opts.dispatcher instanceof Agent ? { ...opts, dispatcher: opts.dispatcher[REAL]() } : opts);
  return { fetch, Agent };
};

/** @postalsys/vmc's vmc(). */
exports.vmc = (from) => ({ vmc: (...args) => mailauthRequire(from)('@postalsys/vmc').vmc(...args) });

/** fast-xml-parser's XMLParser: `new XMLParser(options)` gives the real parser. */
exports.xml = (from) => ({
  XMLParser: class XMLParser {
    constructor(...args) {
      return new (mailauthRequire(from)('fast-xml-parser').XMLParser)(...args);
    }
  },
});
