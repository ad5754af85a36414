// Dates between RFC 5322 (legacy mail) and RFC 3339 (IMA), keeping the
// original offset. The raw header is parsed here: mailparser turns a date
// into a Date (the zone lost) and an unparseable one into "now".
import { daysInMonth } from '../message/date.js';

const MONTHS = ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'];
const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
/** RFC 5322 4.3 obsolete zones, in minutes east of UTC. */
const ZONES: Record<string, number> = { ut: 0, gmt: 0, est: -300, edt: -240, cst: -360, cdt: -300, mst: -420, mdt: -360, pst: -480, pdt: -420 };
const DATE_TIME =
  /^(?:[a-z]{3,9}\s*,?\s*)?(\d{1,2})[\s-]+([a-z]{3,9})\.?[\s-]+(\d{2,4})\s+(\d{1,2}):(\d{2})(?::(\d{2}))?\s*(?:([+-])(\d{2})(\d{2})|([a-z]{1,5}))?$/i;
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(Z|([+-])(\d{2}):(\d{2}))$/;

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

/** An RFC 5322 date-time as RFC 3339 with the same offset, or undefined when it cannot be read. */
export function parseMimeDate(text: string): string | undefined {
  const s = text
    .replace(/\([^()]*\)/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  const m = DATE_TIME.exec(s);
  if (!m) return undefined;
  const [, dd, mon, yy, hh, mi, ss, sign, oh, om, zoneName] = m;
  const month = MONTHS.indexOf(mon.slice(0, 3).toLowerCase()) + 1;
  let year = Number(yy);
  if (yy.length === 2) year += year < 50 ? 2000 : 1900;
  else if (yy.length === 3) year += 1900;
  const day = Number(dd);
  const [hour, minute, second] = [Number(hh), Number(mi), Number(ss ?? 0)];
  if (month === 0 || year < 1900 || day < 1 || day > daysInMonth(year, month) || hour > 23 || minute > 59 || second > 59) return undefined;
  let offset: string;
  if (sign) {
    if (Number(oh) > 23 || Number(om) > 59) return undefined;
    offset = `${sign}${oh}:${om}`;
  } else if (zoneName && zoneName.toLowerCase() in ZONES) {
    const z = ZONES[zoneName.toLowerCase()];
    offset = `${z < 0 ? '-' : '+'}${pad(Math.abs(z) / 60)}:00`;
  } else {
    // No zone, a military letter or an unknown name: RFC 5322 says to read it as -0000 (offset unknown).
    offset = '-00:00';
  }
  return `${pad(year, 4)}-${pad(month)}-${pad(day)}T${pad(hour)}:${pad(minute)}:${pad(second)}${offset}`;
}

/** An RFC 3339 date as RFC 5322 text in the same offset ("Tue, 1 Nov 2022 10:00:00 +0100"); fractions of a second are dropped. */
export function formatMimeDate(rfc3339: string): string | undefined {
  const m = RFC3339.exec(rfc3339);
  if (!m) return undefined;
  const [, y, mo, d, h, mi, s, z, sign, oh, om] = m;
  const weekday = DAYS[new Date(Date.UTC(Number(y), Number(mo) - 1, Number(d))).getUTCDay()];
  const zone = z === 'Z' ? '+0000' : `${sign}${oh}${om}`;
  return `${weekday}, ${Number(d)} ${MONTHS[Number(mo) - 1].replace(/^./, (c) => c.toUpperCase())} ${y} ${h}:${mi}:${s} ${zone}`;
}
