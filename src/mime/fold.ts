// Folding a header line for legacy readers (RFC 5322 2.2.3). Only before a
// space or tab: a line that starts with one is a continuation, and readers
// unfold by removing the CRLF alone, so the text comes back as it was.
// nodemailer's foldLines folds at any JavaScript white space, a no-break
// space (U+00A0) or an ideographic space (U+3000) included; a line starting
// with one of those is no continuation, and a reader took it for a new
// header, or for the end of the header section.

/** Octets a line keeps to where it can (RFC 5322 2.1.1 asks for 78 at most). */
const FOLD_AT = 76;
/** Octets no line may exceed (RFC 5322 2.1.1). */
const MAX_LINE = 998;
/** Before a space or tab that a character other than space or tab follows: a continuation line is never white space only. */
const FOLD_POINT = /(?=[ \t][^ \t])/;

const octets = (s: string) => Buffer.byteLength(s);

/** "Name: value" folded into CRLF-separated lines. */
export function foldHeader(text: string): string {
  const lines: string[] = [];
  let current = '';
  let size = 0;
  for (const piece of text.split(FOLD_POINT)) {
    const n = octets(piece);
    if (current !== '' && size + n > FOLD_AT) {
      lines.push(current);
      [current, size] = [piece, n];
    } else [current, size] = [current + piece, size + n];
  }
  lines.push(current);
  return lines.flatMap(withinMaxLine).join('\r\n');
}

/**
 * A line of more than MAX_LINE octets (a run without space or tab that long)
 * cut where it must, in whole characters, each further piece starting with
 * a space: the only fold that adds to the text, where nothing else makes a
 * line a transport takes.
 */
function withinMaxLine(line: string): string[] {
  if (octets(line) <= MAX_LINE) return [line];
  const out: string[] = [];
  let current = '';
  let size = 0;
  for (const ch of line) {
    const n = octets(ch);
    if (size + n > MAX_LINE) {
      out.push(current);
      [current, size] = [' ', 1];
    }
    [current, size] = [current + ch, size + n];
  }
  out.push(current);
  return out;
}
