// The delivery status notice of smtp-receive. One SMTP reply answers for
// every recipient of a message, so when the handler stored it for some and
// failed for good for others (exit 2), the 250 the stored ones need says
// nothing of the rest: the sender is told by a notice, an IMA message to the
// envelope sender made as run-queue makes its notices (a `notice` header and
// no sender of its own, so a notice is never answered by another), handed to
// notice_command (queue-mail) before the 250 goes out.
import { Readable, type Writable } from 'node:stream';
import { tempFail } from '../failure.js';
import type { Headers } from '../message/index.js';
import { buildNotice } from '../queue/notice.js';
import type { Result } from '../results.js';
import { runStage } from '../stage.js';

export interface NoticeSettings {
  /** The command a notice goes to (queue-mail); empty: failures are only logged. */
  command: readonly string[];
  /** The notice's From: address. */
  from: string;
}

export interface NoticeRun {
  inProcess: boolean;
  timeout: number;
  env: Record<string, string | undefined>;
  cwd: string;
  stderr: Writable;
}

/**
 * Hand the notice of the recipients that failed for good to the notice
 * command; what it printed (the queue id). A notice the command does not
 * take is temporary trouble: the message is then refused 451, and the
 * sender's retry (stored copies are not stored twice) reports them again.
 */
export async function sendFailureNotice(
  n: NoticeSettings,
  run: NoticeRun,
  m: { headers: Headers; sender: string; received: string; failed: Result[] },
): Promise<string> {
  const id = m.headers.get('message-id') ?? '';
  const notice = await buildNotice({
    kind: 'failure',
    // The message's IMA id names the notice: a retry of the message that fails the same way gives the same notice.
    state: { id, sender: m.sender, subject: m.headers.get('subject') ?? '', message_id: id, arrival: new Date().toISOString() },
    recipients: m.failed.map((r) => ({ address: r.address, last_reply: lastReply(r), attempts: 1 })),
    headers: m.headers.serialize(),
    from: n.from,
    now: Date.now(),
    giveUpAt: 0,
    arrivalLine: `Received: ${m.received}`,
  });
  const lines: string[] = [];
  const code = await runStage({
    argv: [...n.command],
    inProcess: run.inProcess,
    env: run.env,
    cwd: run.cwd,
    input: Readable.from([notice]),
    onLine: (l) => lines.push(l),
    stderr: run.stderr,
    timeout: run.timeout,
  });
  if (code !== 0) throw tempFail(`the notice to ${m.sender} of the recipients that failed was not taken (${n.command[0]} exited ${code})`, '4.3.0');
  return lines.join('; ');
}

/** What the notice says of a failed recipient: its reason, and for NORECIPIENT (which has none) the 5.1.1 the DATA reply gives. */
function lastReply(r: Result): string {
  if (r.word === 'NORECIPIENT') return '5.1.1 no such recipient';
  return r.reason || r.word;
}
