export const MIN_INTERVAL_SECONDS = 5;
export const MAX_INTERVAL_SECONDS = 86400;

/** The checkpoint interval as typed: `30`, `30s`, `2m`, `1h` → seconds; '' → undefined (none);
 * null when it is not a whole duration or is outside 5 s to 24 h (what the API accepts). */
export function parseInterval(text: string): number | undefined | null {
  const t = text.trim().toLowerCase();
  if (!t) return undefined;
  const m = /^(\d+)\s*([smh]?)$/.exec(t);
  if (!m) return null;
  const n = Number(m[1]) * (m[2] === 'h' ? 3600 : m[2] === 'm' ? 60 : 1);
  return n >= MIN_INTERVAL_SECONDS && n <= MAX_INTERVAL_SECONDS ? n : null;
}

/** 30 → "30s", 120 → "2m", 5400 → "90m", 3600 → "1h": the largest unit that divides it. */
export function formatInterval(seconds: number): string {
  if (seconds >= 3600 && seconds % 3600 === 0) return `${seconds / 3600}h`;
  if (seconds >= 60 && seconds % 60 === 0) return `${seconds / 60}m`;
  return `${seconds}s`;
}
