// The client side of fetching with IMRP: count what is new, take every new
// message off the wire to a store function, tell the server which ones are
// stored (only after they are durable), count what is left. Where a message
// is stored is the caller's business.
import { Readable } from 'node:stream';
import { Failure } from '../failure.js';
import type { ImrpClient } from './client.js';
import { parseMsgLine } from './wire.js';

/** Messages up to this size are read into memory and stored PARALLEL at a time. */
const SMALL = 1024 * 1024;
const PARALLEL = 16;
/**
 * Large messages whose data is all read off the wire while their store
 * (the last writes, fsyncs, rename) still runs: the next one streams
 * meanwhile. Each holds no more than its stream's buffer.
 */
const LARGE_PARALLEL = 4;
/** Ids per SEEN or DELETE line: 25 ids of 37 bytes fit ima(7)'s 1000-byte line. */
const ACK_BATCH = 25;

/**
 * Ids stored durably here, told to the server a line-full at a time
 * (pipelined: the answers are read at the end, and a line is forgotten only
 * once answered).
 */
export class Acknowledgements {
  private readonly durable: string[] = [];
  private readonly told: string[] = [];

  /** SEEN keeps the messages on the server; DELETE removes them. */
  constructor(readonly verb: 'SEEN' | 'DELETE') {}

  /** An id now stored durably; a full line is told at once. */
  add(client: ImrpClient, id: string): void {
    this.durable.push(id);
    if (this.durable.length >= ACK_BATCH) this.tell(client);
  }

  /** Tell the server what is stored and not yet told. */
  flush(client: ImrpClient): void {
    if (this.durable.length) this.tell(client);
  }

  /** What was told on a lost connection, told again on a new one: the server forgets nothing unconfirmed. */
  retell(client: ImrpClient): void {
    for (const line of this.told) client.send(line);
  }

  /** Read the server's answers to every line told. */
  async confirm(client: ImrpClient): Promise<void> {
    while (this.told.length) {
      await client.ok(this.verb);
      this.told.shift();
    }
  }

  private tell(client: ImrpClient): void {
    const line = `${this.verb} ${this.durable.splice(0).join(' ')}`;
    client.send(line);
    this.told.push(line);
  }
}

/**
 * Ask for every new message, with a count first when one is wanted (for a
 * progress bar): both commands go in one round trip. The count; 0 when not asked.
 */
export async function requestNew(client: ImrpClient, count: boolean): Promise<number> {
  if (count) client.send('LIST new');
  client.send('FETCH NEW');
  let total = 0;
  for (let l = count ? await client.line() : 'OK'; !l.startsWith('OK'); l = await client.line()) {
    if (parseMsgLine(l)) total++;
    else throw new Failure('temporary', `${client.where}: unexpected answer to LIST: ${l.slice(0, 100)}`);
  }
  return total;
}

/** Stores one message; false when it is refused (and so left on the server). */
export type Store = (id: string, size: number, input: Readable) => Promise<boolean>;

export interface Received {
  /** A refused large message was not read to its end: the connection is given up and the rest left on the server. */
  abandoned: boolean;
  /** What a parallel store threw, to be thrown once what is stored is told. */
  failure: unknown;
}

/**
 * Read the messages FETCH NEW sends until its OK. Small messages are taken
 * off the wire into memory and stored several at a time, so their fsyncs
 * overlap; a large one streams to disk, and the next is read while it is
 * synced.
 */
export async function receiveNew(client: ImrpClient, store: Store): Promise<Received> {
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
      const message = await readSmall(client, size);
      while (inFlight.size >= PARALLEL) await Promise.race(inFlight);
      track(store(id, size, Readable.from([message])));
      continue;
    }
    while (inFlight.size >= LARGE_PARALLEL) await Promise.race(inFlight);
    if (!(await streamLarge(client, id, size, store, track))) {
      abandoned = true;
      break;
    }
  }
  await Promise.all(inFlight);
  return { abandoned, failure };
}

async function readSmall(client: ImrpClient, size: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of client.reader.readBytes(size)) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

/**
 * Stream one large message to the store. Once its data is all read, the
 * store is left to finish on its own (tracked) and true returned; false when
 * it was refused before that and the connection given up.
 */
async function streamLarge(client: ImrpClient, id: string, size: number, store: Store, track: (p: Promise<unknown>) => void): Promise<boolean> {
  const { stream, done } = client.reader.pumpData(size);
  const storing = store(id, size, stream);
  const first = await Promise.race([done.then(() => 'read' as const), storing.then((ok) => ok)]).catch((e: unknown) => e);
  if (first === 'read') {
    // A refusal from now on leaves the message on the server; the connection is still in step.
    track(storing);
    return true;
  }
  if (first === true) {
    stream.resume();
    await done;
    return true;
  }
  // Refused or failed before its end: the rest is not read (it may be a bomb of a gigabyte), and this connection is given up.
  client.socket.destroy();
  await done.catch(() => {});
  await storing.catch(() => {});
  if (first === false) return false;
  throw first;
}

/** How many messages are left on the server, in all its folders. */
export async function countLeft(client: ImrpClient): Promise<number> {
  client.send('FOLDERS');
  let left = 0;
  for (let l = await client.line(); !l.startsWith('OK'); l = await client.line()) left += Number(/^FOLDER \S+ (\d+)$/.exec(l)?.[1] ?? 0);
  return left;
}
