/** A drain's deadline as typed: `90`, `90s`, `2m`, `1h` → seconds; '' → undefined (no deadline);
 * null when it is not a duration or is outside 1 s to a day. */
export function parseDeadline(text: string): number | undefined | null {
  const t = text.trim();
  if (!t) return undefined;
  const m = /^(\d+)\s*([smh]?)$/.exec(t);
  if (!m) return null;
  const n = Number(m[1]) * (m[2] === 'h' ? 3600 : m[2] === 'm' ? 60 : 1);
  return n >= 1 && n <= 86400 ? n : null;
}
