// Where a client connects, as configs name it: "HOST", "HOST:PORT",
// "[IP]" or "[IP]:PORT". One reading for smtp-send's smarthost and
// send-mail's [servers], so both take and refuse the same things.
import { isIP } from 'node:net';

/** A host name as DNS and /etc/hosts take it (RFC 1123 labels; "localhost" too), or a dotted IPv4 address. */
const LABEL = '[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?';
const HOST_NAME = new RegExp(`^(?=.{1,253}$)${LABEL}(?:\\.${LABEL})*\\.?$`);
const SERVER = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:[\]]+))(?::(\d{1,5}))?$/;

export interface ServerAddress {
  host: string;
  /** Undefined when not given: the caller's default. */
  port?: number;
}

/** The host and port s names, or why it names none (one line, quoting s). */
export function serverAddress(s: string): ServerAddress | string {
  const m = SERVER.exec(s);
  if (!m) return `expected HOST or HOST:PORT, not ${JSON.stringify(s)}`;
  const port = m[3] === undefined ? undefined : Number(m[3]);
  if (port !== undefined && (port < 1 || port > 65535)) return `port ${m[3]} is not 1-65535`;
  if (m[1] !== undefined && !isIP(m[1])) return `${m[1]}: not an IP address`;
  if (m[2] !== undefined && !HOST_NAME.test(m[2])) return `${m[2]}: not a host name`;
  return { host: m[1] ?? m[2], port };
}
