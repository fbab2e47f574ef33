import { LifeBuoy, RotateCcw } from 'lucide-react';
import { Badge } from '@/components/ui/badge';
import { cn } from '@/lib/utils';
import { modeStyle } from '../utils/modes';

/** A migration's mode; a failover (its node was lost) and a restore (from a checkpoint) stand out. */
export function MigrationModeBadge({ mode, className }: { mode: string; className?: string }) {
  const { label, tone } = modeStyle(mode);
  return (
    <Badge tone={tone} className={cn('px-1.5 py-0 text-[10px]', className)} data-testid="migration-mode" data-mode={mode}>
      {mode === 'failover' ? <LifeBuoy className="h-3 w-3" aria-hidden /> : mode === 'restore' ? <RotateCcw className="h-3 w-3" aria-hidden /> : null}
      {label}
    </Badge>
  );
}
