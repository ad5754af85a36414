// Failed password logins, counted per client address and per user name, for
// every server that takes passwords (post-office; smtp-receive's submission
// role). Each count is a leaky bucket: it goes down by one every `decay` ms,
// so an address or user that stops failing is forgiven in time and the table
// never needs a reset. A success clears nothing: an attacker's login to their
// own account must not wipe the count their guesses at another built up.
// A password being checked counts as a failure from the moment it is taken
// (begin) until it proves right: checking takes long (scrypt), and parallel
// connections that each looked at the count before any failure was added
// would all be tried, however far past the limit.
// Each table holds at most `maxEntries` keys (oldest forgotten first), so a
// flood from many addresses cannot grow memory without bound.

export interface GuardLimits {
  /** At this many failures (by address or by user) password logins are refused. */
  maxFailures: number;
  /** ms for a count to go down by one. */
  decay: number;
  /** ms each failure so far adds to the answer's delay (at most 10 times). */
  delay: number;
  /** Most keys kept per table. */
  maxEntries: number;
}

interface Bucket {
  count: number;
  /** When count was last brought up to date (ms). */
  at: number;
}

/** The failure counts of one login attempt: by its address and by its user, whichever is higher matters. */
export interface Standing {
  address: number;
  user: number;
}

class Buckets {
  private readonly map = new Map<string, Bucket>();
  constructor(private readonly limits: () => GuardLimits) {}

  get size(): number {
    return this.map.size;
  }

  /** The decayed count for key (0 when unknown); a bucket that reached 0 is dropped. */
  count(key: string, now: number): number {
    const b = this.map.get(key);
    if (!b) return 0;
    // Whole steps only, so three quick failures count as three.
    const steps = Math.floor((now - b.at) / this.limits().decay);
    if (steps <= 0) return b.count;
    b.count -= steps;
    b.at += steps * this.limits().decay;
    if (b.count <= 0) {
      this.map.delete(key);
      return 0;
    }
    return b.count;
  }

  /** Take back one count (a pending try that succeeded); never below 0. */
  remove(key: string, now: number): void {
    if (this.count(key, now) === 0) return;
    const b = this.map.get(key)!;
    if (--b.count <= 0) this.map.delete(key);
  }

  add(key: string, now: number): number {
    const known = this.count(key, now) > 0 ? this.map.get(key) : undefined;
    const b = known ?? { count: 0, at: now };
    b.count++;
    // Re-inserting keeps the map in order of last failure: the first key is the stalest.
    this.map.delete(key);
    this.map.set(key, b);
    this.trim();
    return b.count;
  }

  private trim(): void {
    const max = this.limits().maxEntries;
    if (this.map.size <= max) return;
    for (const key of this.map.keys()) {
      if (this.map.size <= max) break;
      this.map.delete(key);
    }
  }
}

/** A password login being checked: counted as failed until `succeeded` says otherwise. */
export interface Attempt {
  /** The counts with this try among them. */
  readonly standing: Standing;
  /** The password was right: this try no longer counts (earlier failures still do). */
  succeeded(): void;
}

export class LoginGuard {
  private readonly byAddress: Buckets;
  private readonly byUser: Buckets;

  constructor(
    private limits: GuardLimits,
    private readonly clock: () => number = Date.now,
  ) {
    this.byAddress = new Buckets(() => this.limits);
    this.byUser = new Buckets(() => this.limits);
  }

  /** New limits (SIGHUP); the counts so far are kept. */
  setLimits(limits: GuardLimits): void {
    this.limits = limits;
  }

  /** Counts so far for this address and user. */
  standing(address: string, user: string): Standing {
    const now = this.clock();
    return { address: this.byAddress.count(address, now), user: this.byUser.count(user, now) };
  }

  /** Is a password login for this user from this address refused unheard (over the limit by either count)? */
  locked(address: string, user: string): boolean {
    const s = this.standing(address, user);
    return Math.max(s.address, s.user) >= this.limits.maxFailures;
  }

  /**
   * Take a password login: undefined when it is refused unheard (over the
   * limit by either count, tries still being checked included); otherwise
   * it is counted as failed at once, before its password is checked.
   */
  begin(address: string, user: string): Attempt | undefined {
    if (this.locked(address, user)) return undefined;
    const standing = this.fail(address, user);
    let open = true;
    const succeeded = () => {
      if (!open) return;
      open = false;
      const now = this.clock();
      this.byAddress.remove(address, now);
      this.byUser.remove(user, now);
    };
    return { standing, succeeded };
  }

  /** Count a failed login; the counts after it. */
  fail(address: string, user: string): Standing {
    const now = this.clock();
    return { address: this.byAddress.add(address, now), user: this.byUser.add(user, now) };
  }

  /** How long to wait before answering a failure with these counts (ms). */
  delayFor(s: Standing): number {
    return Math.min(Math.max(s.address, s.user), 10) * this.limits.delay;
  }

  /** Is a session with these counts to be ended (too many failures)? */
  exhausted(s: Standing): boolean {
    return Math.max(s.address, s.user) >= this.limits.maxFailures;
  }

  /** Keys held (tests, metrics). */
  get size(): { addresses: number; users: number } {
    return { addresses: this.byAddress.size, users: this.byUser.size };
  }
}
