// The tar headers of the canonical writer, byte for byte as tar-stream's
// pack wrote them before the writer wrote its own (write.ts): the same
// content has always given the same bytes, and still does. A name that
// ustar cannot hold (not ASCII, or too long even with a prefix) gets a pax
// header with its `path`, and the entry itself is named "PaxHeader", as
// tar-stream names it. tar-stream does not export its encoder; this is
// its encode() and encodePax() for the fields the writer sets (mode 0644,
// uid and gid 0, no user or group names, regular files only).

const BLOCK = 512;
const MODE = 0o644;
const MAGIC = Buffer.from('ustar\x0000', 'latin1');
const PAX_NAME = 'PaxHeader';
const TYPE_FILE = 0x30; // '0'
const TYPE_PAX = 0x78; // 'x'

/** The header block or blocks (a pax header and its record first, when needed) for one entry. */
export function entryHeaders(name: string, size: number, mtime: Date): Buffer[] {
  const plain = ustar(name, size, TYPE_FILE, mtime);
  if (plain) return [plain];
  const record = paxRecord(`path=${name}`);
  const padded = Buffer.alloc(Math.ceil(record.length / BLOCK) * BLOCK);
  record.copy(padded);
  return [ustar(PAX_NAME, record.length, TYPE_PAX, mtime)!, padded, ustar(PAX_NAME, size, TYPE_FILE, mtime)!];
}

/** A ustar header block; undefined when the name does not fit (then a pax header carries it). */
function ustar(path: string, size: number, type: number, mtime: Date): Buffer | undefined {
  if (Buffer.byteLength(path) !== path.length) return undefined;
  let name = path;
  let prefix = '';
  while (name.length > 100) {
    const i = name.indexOf('/');
    if (i === -1) return undefined;
    prefix += prefix ? `/${name.slice(0, i)}` : name.slice(0, i);
    name = name.slice(i + 1);
  }
  if (name.length > 100 || prefix.length > 155) return undefined;
  const block = Buffer.alloc(BLOCK);
  block.write(name, 0, 'latin1');
  block.write(octal(MODE, 6), 100, 'latin1');
  block.write(octal(0, 6), 108, 'latin1');
  block.write(octal(0, 6), 116, 'latin1');
  writeSize(block, size);
  // tar-stream's `| 0`: seconds as a 32-bit integer.
  block.write(octal((mtime.getTime() / 1000) | 0, 11), 136, 'latin1');
  block[156] = type;
  MAGIC.copy(block, 257);
  block.write(octal(0, 6), 329, 'latin1');
  block.write(octal(0, 6), 337, 'latin1');
  if (prefix) block.write(prefix, 345, 'latin1');
  block.write(octal(checksum(block), 6), 148, 'latin1');
  return block;
}

/** n octal digits and a space; all sevens when the value does not fit (as tar-stream does). */
function octal(value: number, n: number): string {
  const digits = value.toString(8);
  return digits.length > n ? `${'7'.repeat(n)} ` : `${digits.padStart(n, '0')} `;
}

/** The size field: 11 octal digits, or base-256 beyond them (8 GiB and over). */
function writeSize(block: Buffer, size: number): void {
  if (size.toString(8).length <= 11) {
    block.write(octal(size, 11), 124, 'latin1');
    return;
  }
  block[124] = 0x80;
  for (let i = 11, n = size; i > 0; i--, n = Math.floor(n / 0x100)) block[124 + i] = n & 0xff;
}

function checksum(block: Buffer): number {
  let sum = 8 * 32;
  for (let i = 0; i < 148; i++) sum += block[i];
  for (let i = 156; i < BLOCK; i++) sum += block[i];
  return sum;
}

/** One pax record, "LEN key=value\n", LEN counting itself (tar-stream's addLength, its arithmetic included). */
function paxRecord(keyValue: string): Buffer {
  const text = ` ${keyValue}\n`;
  const len = Buffer.byteLength(text);
  let digits = Math.floor(Math.log(len) / Math.log(10)) + 1;
  if (len + digits >= Math.pow(10, digits)) digits++;
  return Buffer.from(`${len + digits}${text}`);
}
