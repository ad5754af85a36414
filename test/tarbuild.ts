// Hand-made tar archives for hostile-input tests: raw ustar blocks built here,
// not by the writer under test, so any entry type, name or size can be forged.
const BLOCK = 512;

export interface RawHeader {
  name: string;
  size?: number;
  type?: string; // typeflag character
  linkname?: string;
  /** Override the size field text (to forge odd encodings). */
  sizeField?: Buffer;
}

function put(buf: Buffer, off: number, len: number, text: string) {
  Buffer.from(text, 'utf8').copy(buf, off, 0, len);
}

function octal(n: number, len: number): string {
  return n.toString(8).padStart(len - 1, '0') + '\0';
}

export function header(h: RawHeader): Buffer {
  const b = Buffer.alloc(BLOCK);
  put(b, 0, 100, h.name);
  put(b, 100, 8, octal(0o644, 8));
  put(b, 108, 8, octal(0, 8));
  put(b, 116, 8, octal(0, 8));
  if (h.sizeField) h.sizeField.copy(b, 124, 0, 12);
  else put(b, 124, 12, octal(h.size ?? 0, 12));
  put(b, 136, 12, octal(0, 12));
  b.write('        ', 148, 'latin1');
  b.write(h.type ?? '0', 156, 'latin1');
  if (h.linkname) put(b, 157, 100, h.linkname);
  b.write('ustar\0', 257, 'latin1');
  b.write('00', 263, 'latin1');
  let sum = 0;
  for (const x of b) sum += x;
  put(b, 148, 8, sum.toString(8).padStart(6, '0') + '\0 ');
  return b;
}

export function pad(data: Buffer): Buffer {
  const rest = data.length % BLOCK;
  return rest ? Buffer.concat([data, Buffer.alloc(BLOCK - rest)]) : data;
}

/** A regular-file entry (or any type) with its data. */
export function entry(name: string, data: Buffer | string = '', type = '0'): Buffer {
  const d = Buffer.from(data);
  return Buffer.concat([header({ name, size: d.length, type }), pad(d)]);
}

export function paxRecords(records: Record<string, string>): Buffer {
  let out = '';
  for (const [k, v] of Object.entries(records)) {
    const body = ` ${k}=${v}\n`;
    let len = Buffer.byteLength(body) + 1;
    while (String(len).length + Buffer.byteLength(body) !== len) len = String(len).length + Buffer.byteLength(body);
    out += `${len}${body}`;
  }
  return Buffer.from(out);
}

/** A pax extended header entry followed by nothing: the caller adds the entry it describes. */
export function pax(records: Record<string, string>): Buffer {
  const d = paxRecords(records);
  return Buffer.concat([header({ name: 'PaxHeader', size: d.length, type: 'x' }), pad(d)]);
}

export const END = Buffer.alloc(BLOCK * 2);

export const HEADERS = 'from: a@a.test\nto: b@b.test\ndate: 2026-01-02T03:04:05Z\nmessage-id: urn:uuid:12345678-1234-4234-8234-123456789abc\n';

export function tarOf(...parts: Buffer[]): Buffer {
  return Buffer.concat([...parts, END]);
}

/** Where each entry of a plain ustar archive (no pax or long names) starts, and where the end-of-archive blocks start. */
export function entryOffsets(tar: Buffer): number[] {
  const out: number[] = [];
  let off = 0;
  while (off + BLOCK <= tar.length && tar.subarray(off, off + BLOCK).some((b) => b !== 0)) {
    out.push(off);
    const size = parseInt(
      tar
        .subarray(off + 124, off + 136)
        .toString('latin1')
        .replace(/\0.*$/s, '')
        .trim() || '0',
      8,
    );
    off += BLOCK + Math.ceil(size / BLOCK) * BLOCK;
  }
  out.push(off);
  return out;
}
