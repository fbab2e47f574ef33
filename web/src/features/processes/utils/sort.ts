import type { Process } from '@/types/api';

const order: Record<string, number> = { migrating: 0, held: 1, running: 2, paused: 3, unknown: 4, failed: 5, exited: 6 };

/** Moving and running first, then paused, then those of offline nodes, then ended ones; by name within each. */
export function sortProcesses(list: Process[]): Process[] {
  return [...list].sort(
    (a, b) => (order[a.status] ?? 9) - (order[b.status] ?? 9) || a.name.localeCompare(b.name) || a.id.localeCompare(b.id),
  );
}
