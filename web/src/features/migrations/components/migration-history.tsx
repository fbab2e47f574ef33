import type { Migration } from '@/types/api';
import { formatMs, formatTime } from '@/lib/format';
import { cn } from '@/lib/utils';
import { isFromCheckpoint } from '../utils/modes';
import { MigrationStatusBadge } from './migration-status-badge';
import { MigrationModeBadge } from './migration-mode-badge';

type Props = {
  migrations: Migration[];
  names: Map<string, string>;
  selectedId: string | null;
  onSelect: (id: string) => void;
  max?: number;
};

/** Recent migrations, newest first; a click shows one in detail. */
export function MigrationHistory({ migrations, names, selectedId, onSelect, max = 8 }: Props) {
  const recent = [...migrations].sort((a, b) => b.startedAt.localeCompare(a.startedAt) || b.id.localeCompare(a.id)).slice(0, max);
  if (recent.length === 0) {
    return <p className="text-sm text-slate-500 dark:text-slate-400">No migrations yet.</p>;
  }
  return (
    <ul className="divide-y divide-slate-100 dark:divide-slate-800" data-testid="migration-history">
      {recent.map((m) => (
        <li key={m.id}>
          <button
            type="button"
            onClick={() => onSelect(m.id)}
            className={cn(
              'flex w-full cursor-pointer items-center gap-3 px-2 py-1.5 text-left text-sm hover:bg-slate-50 dark:hover:bg-slate-800/60',
              selectedId === m.id && 'bg-teal-50 dark:bg-teal-950/40',
            )}
            data-testid="migration-history-item"
            data-migration-id={m.id}
          >
            <span className="w-16 shrink-0 font-mono text-[11px] text-slate-500 dark:text-slate-400">{formatTime(m.startedAt)}</span>
            <span className="min-w-0 flex-1 truncate">
              {names.get(m.processId) ?? m.processId}{' '}
              <span className="font-mono text-xs text-slate-500 dark:text-slate-400">
                {m.sourceServerId} → {m.targetServerId}
              </span>
            </span>
            {isFromCheckpoint(m.mode) ? <MigrationModeBadge mode={m.mode} /> : null}
            <span className="w-16 text-right text-xs tabular-nums text-slate-500">{m.downtimeMs != null ? formatMs(m.downtimeMs) : ''}</span>
            <MigrationStatusBadge status={m.status} />
          </button>
        </li>
      ))}
    </ul>
  );
}
