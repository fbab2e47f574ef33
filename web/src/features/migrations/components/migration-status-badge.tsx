import { Badge } from '@/components/ui/badge';
import { humanize } from '@/lib/format';

export function MigrationStatusBadge({ status, className }: { status: string; className?: string }) {
  const tone = status === 'completed' ? 'green' : status === 'failed' ? 'red' : status === 'rolled_back' ? 'amber' : 'blue';
  return (
    <Badge tone={tone} className={className} data-testid="migration-status" data-status={status}>
      {status === 'completed' || status === 'failed' || status === 'rolled_back' ? null : (
        <span className="h-1.5 w-1.5 animate-pulse rounded-full bg-current" />
      )}
      {humanize(status)}
    </Badge>
  );
}
