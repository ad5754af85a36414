// The date field of ima-message(5): an RFC 3339 date-time with a time zone,
// checked field by field. A pattern alone takes 2026-02-31 and 24:00:00, and
// Date.parse is no help: it refuses the leap second 23:59:60 that RFC 3339
// allows, and rolls some impossible dates over to the next month.
const DATE_TIME = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d{1,9})?(?:Z|[+-](\d{2}):(\d{2}))$/;

const DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/** Gregorian, proleptic as RFC 3339 is: every year from 0000 on. */
const isLeapYear = (year: number) => (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;

/** The days of month (1-12) in year. */
export function daysInMonth(year: number, month: number): number {
  return month === 2 && isLeapYear(year) ? 29 : DAYS[month - 1];
}

/** Whether text is an RFC 3339 date-time (section 5.6) whose every field is in range; second 60 is a leap second. */
export function isDateTime(text: string): boolean {
  const m = DATE_TIME.exec(text);
  if (!m) return false;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number);
  const [offsetHours, offsetMinutes] = [m[7], m[8]].map((x) => Number(x ?? 0));
  return (
    month >= 1 &&
    month <= 12 &&
    day >= 1 &&
    day <= daysInMonth(year, month) &&
    hour <= 23 &&
    minute <= 59 &&
    second <= 60 &&
    offsetHours <= 23 &&
    offsetMinutes <= 59
  );
}

/**
 * The time of an RFC 3339 date-time in milliseconds since the epoch, or NaN
 * when text is none. POSIX time has no leap second: 23:59:60 counts as
 * 23:59:59, where Date.parse would give NaN and the date would seem absent.
 */
export function dateTimeMs(text: string): number {
  if (!isDateTime(text)) return NaN;
  return Date.parse(text.replace(/^(.{16}):60/, '$1:59'));
}
