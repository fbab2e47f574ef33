import type { MigrationMode } from '@/types/api';

/** The choices the form offers, as the API names them (POST /api/migrations `mode`). */
export const MODE_CHOICES = [
  {
    value: 'stop-and-copy',
    label: 'stop-and-copy',
    help: 'Freezes, copies everything, then resumes on the target. The safe default.',
  },
  {
    value: 'post-copy',
    label: 'post-copy',
    help: 'Resumes on the target before the memory arrives (CRIU engine only); the workload depends on the source until every page is there.',
  },
  {
    value: 'auto',
    label: 'auto',
    help: 'The coordinator chooses: post-copy for a large CRIU workload, else stop-and-copy.',
  },
] as const satisfies readonly { value: MigrationMode; label: string; help: string }[];

export type ModeChoice = (typeof MODE_CHOICES)[number]['value'];

export function modeHelp(choice: ModeChoice): string {
  return MODE_CHOICES.find((m) => m.value === choice)?.help ?? '';
}

/** Whether a migration's recorded mode is post-copy (older gateways wrote post_copy). */
export function isPostCopy(mode: string): boolean {
  return mode === 'post-copy' || mode === 'post_copy';
}

/** Whether a migration restores a checkpoint rather than moving a live process: "restore" (asked
 * for) or "failover" (its node was lost). */
export function isFromCheckpoint(mode: string): boolean {
  return mode === 'restore' || mode === 'failover';
}

/** How a recorded mode is shown: its words, and a tone that sets restores and failovers apart. */
export function modeStyle(mode: string): { label: string; tone: 'neutral' | 'amber' | 'blue' } {
  if (mode === 'failover') return { label: 'failover', tone: 'amber' };
  if (mode === 'restore') return { label: 'restore', tone: 'blue' };
  return { label: mode.replace(/_/g, '-'), tone: 'neutral' };
}
