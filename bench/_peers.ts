// The peers the toolkit is measured against, each started privately for the
// run: Dovecot (IMAPS on a high port) with mbsync (isync) as its client, and
// a C program doing write+fsync+rename+fsync(dir) compiled here with cc.
// (Postfix, the receiving peer, is test/postfix-fixture.ts, shared with the tests.)
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Pki } from './_bench.js';

/** Run a command to completion; throw with its output when it fails. */
export function must(cmd: string, args: string[], opts: { cwd?: string; input?: string | Buffer } = {}): string {
  const r = spawnSync(cmd, args, { ...opts, encoding: 'utf8', stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
  if (r.error) throw new Error(`bench: ${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`bench: ${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** Is the command there (Debian package installed)? */
export function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

const NOBODY = 65534;

export interface Dovecot {
  port: number;
  /** The Maildir bob's INBOX lives in. */
  maildir: string;
  masterPid(): number;
  stop(): void;
}

/** A private Dovecot: IMAPS on 127.0.0.1:port, user bob with password "bench", INBOX a Maildir. */
export function startDovecot(dir: string, pki: Pki, port: number): Dovecot {
  const maildir = join(dir, 'mail', 'bob', 'Maildir');
  for (const f of ['tmp', 'new', 'cur']) mkdirSync(join(maildir, f), { recursive: true });
  writeFileSync(
    join(dir, 'dovecot.conf'),
    `base_dir = ${dir}/run
state_dir = ${dir}/state
log_path = ${dir}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <${pki.b.cert}
ssl_key = <${pki.b.key}
auth_mechanisms = plain
passdb {
  driver = static
  args = password=bench
}
userdb {
  driver = static
  args = uid=${NOBODY} gid=${NOBODY} home=${dir}/mail/%u
}
mail_location = maildir:${dir}/mail/%u/Maildir
first_valid_uid = 1
default_internal_user = dovecot
default_login_user = dovenull
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = ${port}
    ssl = yes
  }
}
service anvil {
  chroot =
}
service imap-login {
  chroot =
}
`,
  );
  return {
    port,
    maildir,
    masterPid: () => Number(readFileSync(join(dir, 'run', 'master.pid'), 'utf8').trim()),
    stop: () => void spawnSync('doveadm', ['-c', join(dir, 'dovecot.conf'), 'stop'], { stdio: 'ignore' }),
  };
}

/** Start Dovecot once its Maildir is filled (files must belong to the mail user). */
export function launchDovecot(dir: string): void {
  must('chown', ['-R', `${NOBODY}:${NOBODY}`, join(dir, 'mail')]);
  // dovecot daemonizes keeping its stdout and stderr: give it none, or spawnSync waits for ever.
  const r = spawnSync('dovecot', ['-c', join(dir, 'dovecot.conf')], { stdio: 'ignore' });
  if (r.status !== 0) throw new Error(`bench: dovecot exited ${r.status}: see ${join(dir, 'dovecot.log')}`);
}

/** An mbsync config pulling bob's INBOX into `near` (a Maildir), over IMAPS, fsync on (its default). */
export function mbsyncConfig(dir: string, pki: Pki, port: number, near: string): string {
  const file = join(dir, `mbsyncrc-${readdirSync(dir).length}`);
  writeFileSync(
    file,
    `IMAPAccount bench
Host 127.0.0.1
Port ${port}
User bob
Pass bench
SSLType IMAPS
CertificateFile ${pki.b.cert}
PipelineDepth 50

IMAPStore far
Account bench

MaildirStore near
Path ${near}/
Inbox ${near}/INBOX

Channel pull
Far :far:
Near :near:
Patterns INBOX
Create Near
Sync Pull
SyncState *
`,
  );
  return file;
}

const C_DELIVER = `/* The local-delivery peer: for each message, write it into tmp/, fsync,
   rename into new/, fsync new/. "loop N FILE DIR" delivers FILE N times;
   "one DIR" delivers stdin once (a process per message). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static char buf[1 << 20];
static void deliver(const char *dir, const char *data, size_t len, int dirfd, long i) {
  char tmp[4096], dst[4096];
  snprintf(tmp, sizeof tmp, "%s/tmp/%d.%ld", dir, getpid(), i);
  snprintf(dst, sizeof dst, "%s/new/%d.%ld", dir, getpid(), i);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0 || write(fd, data, len) != (ssize_t)len || fsync(fd) || close(fd)) { perror(tmp); exit(75); }
  if (rename(tmp, dst) || fsync(dirfd)) { perror(dst); exit(75); }
}
int main(int argc, char **argv) {
  if (argc == 5 && !strcmp(argv[1], "loop")) {
    int in = open(argv[3], O_RDONLY);
    ssize_t len = read(in, buf, sizeof buf);
    char nd[4096]; snprintf(nd, sizeof nd, "%s/new", argv[4]);
    int dirfd = open(nd, O_RDONLY);
    if (in < 0 || len < 0 || dirfd < 0) { perror("open"); return 75; }
    for (long i = 0, n = atol(argv[2]); i < n; i++) deliver(argv[4], buf, len, dirfd, i);
    return 0;
  }
  if (argc == 3 && !strcmp(argv[1], "one")) {
    size_t len = 0; ssize_t r;
    while ((r = read(0, buf + len, sizeof buf - len)) > 0) len += r;
    char nd[4096]; snprintf(nd, sizeof nd, "%s/new", argv[2]);
    int dirfd = open(nd, O_RDONLY);
    if (dirfd < 0) { perror(nd); return 75; }
    deliver(argv[2], buf, len, dirfd, 0);
    puts("OK");
    return 0;
  }
  fprintf(stderr, "usage: deliver loop N FILE DIR | deliver one DIR\\n");
  return 64;
}
`;

/** Compile the C delivery peer into dir; returns its path. */
export function compileDeliver(dir: string): string {
  writeFileSync(join(dir, 'deliver.c'), C_DELIVER);
  must('cc', ['-O2', '-o', join(dir, 'deliver'), join(dir, 'deliver.c')]);
  return join(dir, 'deliver');
}
