import type { Process } from '@/types/api';

/** Which processes can move: those that run (or are paused) and are not moving already. */
export function movable(processes: Process[]): Process[] {
  return processes.filter((p) => p.status === 'running' || p.status === 'paused');
}
