// SPF, DKIM and DMARC verdicts (mailauth) for the mx role, computed while the
// message streams in, and written as one `authentication-results` header
// value (RFC 8601) for the IMA message. DNS goes through the resolver given:
// Node's (optionally with configured servers) in service, a table in tests.
// mailauth (with what it pulls in) is about a third of the server's idle
// memory (36 of ~94 MB), so it is loaded only when verdicts are on: at start
// when the config says so, else at the first message that needs it.
import { promises as dns } from 'node:dns';
import type { Readable } from 'node:stream';
import type { DNSResolver } from 'mailauth';

type Authenticate = (typeof import('mailauth'))['authenticate'];
let mailauth: Promise<Authenticate> | undefined;

/** Load mailauth now (a server with verdicts on, at start), so no message waits for it. */
export function loadMailauth(): Promise<Authenticate> {
  // mailauth is CommonJS: bundled, its exports come as the namespace's default.
  mailauth ??= import('mailauth').then((m) => m.authenticate ?? (m as unknown as { default: { authenticate: Authenticate } }).default.authenticate);
  return mailauth;
}

export interface Verdicts {
  /** The `authentication-results` header value, on one line. */
  header: string;
  /** The sender's domain publishes p=reject (or sp=reject) and the message failed DMARC. */
  dmarcReject: boolean;
  /** For the log: spf=..., dkim=..., dmarc=.... */
  summary: string;
}

export interface VerdictInput {
  ip: string;
  helo: string;
  /** MAIL FROM ('' for the null sender). */
  sender: string;
  /** Our name, the authserv-id. */
  hostname: string;
  resolver: DNSResolver;
}

/** A resolver asking the given servers ("127.0.0.1", "[::1]:5353"), or the system's when none. */
export function dnsResolver(servers: readonly string[], timeoutMs = 5000): DNSResolver {
  const r = new dns.Resolver({ timeout: timeoutMs, tries: 2 });
  if (servers.length) r.setServers([...servers]);
  return (name, type) => r.resolve(name, type) as Promise<string[][] | string[]>;
}

const oneLine = (s: string) =>
  s
    .replace(/\r?\n[ \t]+/g, ' ')
    .replace(/[\x00-\x1f\x7f]/g, ' ')
    .trim();

/** Read the message (it must be read to the end) and work out the verdicts. */
export async function verdicts(message: Readable, v: VerdictInput): Promise<Verdicts> {
  const authenticate = await loadMailauth();
  // Refused while mailauth loaded: a destroyed stream gives mailauth's pipe neither data nor an end.
  if (message.destroyed) throw message.errored ?? new Error('the message stream was closed before the checks started');
  const r = await authenticate(message, {
    ip: v.ip,
    helo: v.helo,
    sender: v.sender,
    mta: v.hostname,
    resolver: v.resolver,
    disableArc: true,
    disableBimi: true,
  });
  const parts: string[] = [];
  for (const d of r.dkim.results ?? []) parts.push(oneLine(d.info));
  if (r.spf) parts.push(oneLine(r.spf.info));
  if (r.dmarc && r.dmarc.info) parts.push(oneLine(r.dmarc.info));
  const header = `${v.hostname}; ${parts.length ? parts.join('; ') : 'none'}`;
  // From the results, not read back out of the header's text: that holds the
  // client's own words (smtp.mailfrom, smtp.helo), and MAIL FROM:<dmarc=pass@x>
  // put "dmarc=pass" in the log line of a message that failed DMARC.
  const word = (result: string | undefined) => (result && /^[a-z]+$/.test(result) ? result : 'none');
  const summary = `spf=${word(r.spf ? r.spf.status.result : undefined)} dkim=${word(r.dkim.results?.[0]?.status.result)} dmarc=${word(r.dmarc ? r.dmarc.status.result : undefined)}`;
  const dmarcReject = !!r.dmarc && r.dmarc.status.result === 'fail' && r.dmarc.policy === 'reject';
  return { header, dmarcReject, summary };
}
