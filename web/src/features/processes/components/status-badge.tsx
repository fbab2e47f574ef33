import { Badge, type BadgeTone } from '@/components/ui/badge';
import type { ProcessStatus } from '@/types/api';

const tones: Record<ProcessStatus, BadgeTone> = {
  running: 'green',
  paused: 'amber',
  migrating: 'blue',
  held: 'blue',
  unknown: 'amber',
  exited: 'neutral',
  failed: 'red',
};

export function ProcessStatusBadge({ status }: { status: ProcessStatus }) {
  return (
    <Badge tone={tones[status] ?? 'neutral'} data-testid="process-status">
      <span className="h-1.5 w-1.5 rounded-full bg-current" />
      {status}
    </Badge>
  );
}
