// A standard Maildir (tmp/ new/ cur/, one file per message), as mutt, aerc
// and mblaze read it: not the IMA mailbox of mailbox.ts. Each message file is
// written into tmp/, fsync'ed, linked into new/ under the UUID of its IMA
// message-id and new/ fsync'ed. The name makes delivery idempotent: a
// message whose UUID is already in new/ or cur/ (where a reader moves it,
// adding ":2,FLAGS") is not written again.
import { lstatSync } from 'node:fs';
import { link, mkdir, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { fsyncDir, uniqueName, writeSynced } from './files.js';

const FOLDERS = ['tmp', 'new', 'cur'] as const;

/** The base of a Maildir file name: what comes before the ":2,FLAGS" info a reader adds. */
const base = (name: string) => name.split(':')[0];

export class Maildir {
  private constructor(
    readonly dir: string,
    private readonly stored: Set<string>,
  ) {}

  /** Open a Maildir, creating it (0700, durably) when it is missing; learn what it already holds. */
  static async open(dir: string): Promise<Maildir> {
    const missing = FOLDERS.filter((f) => !lstatSync(join(dir, f), { throwIfNoEntry: false })?.isDirectory());
    if (missing.length) {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      for (const f of missing) await mkdir(join(dir, f), { mode: 0o700 });
      for (const f of missing) await fsyncDir(join(dir, f));
      await fsyncDir(dir);
    }
    const stored = new Set<string>();
    for (const f of ['new', 'cur']) for (const name of await readdir(join(dir, f))) stored.add(base(name));
    return new Maildir(dir, stored);
  }

  has(name: string): boolean {
    return this.stored.has(name);
  }

  /**
   * Store one message under `name` (no "/", no ":"): `write` fills the file.
   * Returns false, writing nothing, when the Maildir already has it.
   */
  async deliver(name: string, write: (out: Writable) => Promise<void>): Promise<boolean> {
    if (!/^[^/:.][^/:]*$/.test(name)) throw new Error(`bad Maildir file name ${JSON.stringify(name)}`);
    if (this.stored.has(name)) return false;
    const tmp = join(this.dir, 'tmp', uniqueName());
    try {
      await writeSynced(tmp, write, 0o600);
      // link(2), not rename(2): it never replaces a file another run stored meanwhile.
      try {
        await link(tmp, join(this.dir, 'new', name));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        this.stored.add(name);
        return false;
      }
      await fsyncDir(join(this.dir, 'new'));
      this.stored.add(name);
      return true;
    } finally {
      await unlink(tmp).catch(() => {});
    }
  }
}
