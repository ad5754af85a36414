// A long-running program's heap, held small.
//
// The young generation. V8 grows it, where new objects are made, from
// 1 MiB to 32 MiB while a busy server keeps objects alive across
// collections. A Buffer's bytes live outside that heap, but they are freed
// only when a collection finds the Buffer dead, so they grew along with it:
// receiving 4 KB messages, server-receive's peak RSS was 117-121 MB, 32 MB
// of it the young generation and most of the rest C heap holding Buffers
// not yet collected. The flag that caps it, --max-semi-space-size, works
// only on node's command line, and any V8 flag there costs every program
// about 3 ms at start: V8 then refuses Node's own code cache, made without
// flags. So a long-running program lets the young generation grow to
// YOUNG_GENERATION_LIMIT and then stops its growth: V8 reads
// --semi-space-growth-factor each time it grows it. Measured on the same
// load: peak RSS 91-93 MB, the same rate and CPU per message.
//
// The old generation. After each full collection V8 lets it grow to up to
// four times what was live before the next one, more the quicker its
// collections are: objects that outlive two young collections (a message
// in flight) and die later filled it with garbage. smtp-receive under
// smtp-source's load (2,000 x 4 KB over ten sessions) peaked at 98-102 MB,
// 31 MB of it old space of which 19 MB was live. OLD_GENERATION_GROWTH
// fixes the factor at 2 (V8 reads it at each collection too): 78-85 MB, at
// the same rate and CPU per message within the noise (a factor of 1.5 gave
// 79 MB for 3-10% more CPU).
import { PerformanceObserver } from 'node:perf_hooks';
import { getHeapSpaceStatistics, setFlagsFromString } from 'node:v8';

/** The young generation's size (both halves) at which it stops growing. */
export const YOUNG_GENERATION_LIMIT = 4 * 1024 * 1024;

/** The old generation's next limit: (1 + this / 100) times what a full collection found live. */
const OLD_GENERATION_GROWTH = 100;

/** The young generation's size now, in bytes. */
function youngGenerationSize(): number {
  return getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.space_size ?? 0;
}

/**
 * From the first collection that finds the young generation at
 * YOUNG_GENERATION_LIMIT or more, V8 no longer grows it (V8 doubles it from
 * 1 MiB, so it stops at the limit, a power of two), and grows the old
 * generation by OLD_GENERATION_GROWTH. Both flags are set at once: changing
 * a flag changes the hash V8 checks a code cache against, so code compiled
 * after that (a chunk or Node module first loaded then) compiles from
 * source, once.
 */
export function boundServerHeap(): void {
  const observer = new PerformanceObserver(() => {
    if (youngGenerationSize() < YOUNG_GENERATION_LIMIT) return;
    observer.disconnect();
    setFlagsFromString('--semi-space-growth-factor=1');
    setFlagsFromString(`--heap-growing-percent=${OLD_GENERATION_GROWTH}`);
  });
  observer.observe({ entryTypes: ['gc'] });
}
