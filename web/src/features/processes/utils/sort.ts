import type { Process } from '@/types/api';

const order: Record<string, number> = { migrating: 0, running: 1, paused: 2, failed: 3, exited: 4 };

/** Moving and running first, then paused, then ended ones; by name within each. */
export function sortProcesses(list: Process[]): Process[] {
  return [...list].sort(
    (a, b) => (order[a.status] ?? 9) - (order[b.status] ?? 9) || a.name.localeCompare(b.name) || a.id.localeCompare(b.id),
  );
}
