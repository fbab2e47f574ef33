import type { FerryEvent } from '@/types/api';
import type { LogFilter } from '@/lib/query-keys';

/** Whether an event belongs in a log list filtered by process and level (as GET /api/logs does). */
export function matchesFilter(e: FerryEvent, f: LogFilter): boolean {
  if (f.process && e.processId !== f.process) return false;
  if (f.level && e.level !== f.level) return false;
  return true;
}

/**
 * The list with `e` added when it matches the filter: in id order, each id once, at most
 * `limit` (default 200) newest entries. Returns the same array when nothing changes.
 */
export function appendEvent(list: FerryEvent[], e: FerryEvent, f: LogFilter): FerryEvent[] {
  if (!matchesFilter(e, f)) return list;
  if (list.some((x) => x.id === e.id)) return list;
  const limit = f.limit ?? 200;
  const next = [...list, e];
  if (list.length > 0 && list[list.length - 1].id > e.id) next.sort((a, b) => a.id - b.id);
  return next.length > limit ? next.slice(next.length - limit) : next;
}

/** Client-side text search over message, kind, node and process. */
export function searchEvents(list: FerryEvent[], text: string): FerryEvent[] {
  const t = text.trim().toLowerCase();
  if (!t) return list;
  return list.filter((e) =>
    [e.message, e.kind, e.serverId, e.processId].some((s) => s?.toLowerCase().includes(t)),
  );
}
