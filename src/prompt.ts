// Reading a secret from a person: without echo on a terminal. Used for
// passwords, which never come from the command line.
import { usageError } from './failure.js';
import type { Io } from './io.js';

/** Prompt on stderr and read one line from a terminal without echo. */
export async function readSecret(io: Io, prompt: string): Promise<string> {
  const stdin = io.stdin as NodeJS.ReadStream;
  io.stderr.write(prompt);
  stdin.setRawMode(true);
  let secret = '';
  try {
    for await (const chunk of stdin) {
      for (const ch of String(chunk)) {
        if (ch === '\r' || ch === '\n') return secret;
        if (ch === '\u0003') throw usageError('interrupted');
        secret = ch === '\u007f' ? secret.slice(0, -1) : secret + ch;
      }
    }
    return secret;
  } finally {
    stdin.setRawMode(false);
    io.stderr.write('\n');
  }
}

export function isTerminal(io: Io): boolean {
  return !!(io.stdin as NodeJS.ReadStream).isTTY;
}
