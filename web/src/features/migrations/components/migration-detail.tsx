import { useEffect, useState } from 'react';
import { Check, CircleDashed, Loader2, X } from 'lucide-react';
import { Alert } from '@/components/ui/alert';
import type { FerryEvent, Migration } from '@/types/api';
import { isFinal } from '@/types/api';
import { formatBytes, formatMs, formatRate, formatTime } from '@/lib/format';
import { cn } from '@/lib/utils';
import { liveSteps, liveTransferRate, phaseDuration, phaseLabel, type LiveStep } from '../utils/timeline';
import { isFromCheckpoint, modeStyle } from '../utils/modes';
import { MigrationStatusBadge } from './migration-status-badge';
import { MigrationModeBadge } from './migration-mode-badge';
import { PhaseTimeline } from './phase-timeline';

type Props = {
  migration: Migration;
  /** Events of the migration's process (GET /api/logs plus the live stream). */
  events: FerryEvent[];
  processName?: string;
};

function useNow(active: boolean): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (!active) return;
    const t = setInterval(() => setNow(Date.now()), 500);
    return () => clearInterval(t);
  }, [active]);
  return now;
}

function StepIcon({ state }: { state: LiveStep['state'] }) {
  if (state === 'done') return <Check className="h-3.5 w-3.5" />;
  if (state === 'current') return <Loader2 className="h-3.5 w-3.5 animate-spin" />;
  if (state === 'failed') return <X className="h-3.5 w-3.5" />;
  return <CircleDashed className="h-3.5 w-3.5" />;
}

/** The phases as they arrive: done, the one in progress, and those still to come. */
export function LiveProgress({ migration, events }: { migration: Migration; events: FerryEvent[] }) {
  const running = !isFinal(migration.status);
  const now = useNow(running);
  const steps = liveSteps(migration, events);
  const rate = liveTransferRate(steps, now);
  const elapsed = now - Date.parse(migration.startedAt);
  return (
    <div data-testid="migration-progress">
      <ol className="space-y-1">
        {steps.map((s, i) => {
          const next = steps[i + 1];
          // Exact once the migration reports its phases; else from the events' arrival, which is
          // only meaningful when they did not come in one batch.
          const fromEvents = s.at != null && next?.at != null && next.state !== 'pending' ? next.at - s.at : null;
          const took = phaseDuration(migration, s.phase) ?? (fromEvents && fromEvents > 0 ? fromEvents : null);
          const bytes = next && next.state !== 'pending' ? next : s;
          return (
            <li
              key={s.phase}
              data-testid="progress-step"
              data-phase={s.phase}
              data-state={s.state}
              className={cn(
                'flex items-center gap-2 rounded-md px-2 py-1 text-sm',
                s.state === 'current' && 'bg-sky-50 font-medium text-sky-900 dark:bg-sky-950/60 dark:text-sky-100',
                s.state === 'pending' && 'text-slate-400 dark:text-slate-500',
                s.state === 'failed' && 'bg-red-50 text-red-800 dark:bg-red-950/50 dark:text-red-200',
              )}
            >
              <span
                className={cn(
                  'flex h-5 w-5 items-center justify-center rounded-full',
                  s.state === 'done' && 'bg-emerald-100 text-emerald-700 dark:bg-emerald-900/60 dark:text-emerald-300',
                  s.state === 'current' && 'bg-sky-100 text-sky-700 dark:bg-sky-900 dark:text-sky-300',
                  s.state === 'pending' && 'bg-slate-100 dark:bg-slate-800',
                  s.state === 'failed' && 'bg-red-100 text-red-700 dark:bg-red-900 dark:text-red-300',
                )}
              >
                <StepIcon state={s.state} />
              </span>
              <span className="flex-1">{phaseLabel(s.phase)}</span>
              {s.phase === 'transfer' && s.state !== 'pending' ? (
                <span className="text-xs tabular-nums text-slate-600 dark:text-slate-300" data-testid="transfer-progress">
                  {s.state === 'current' ? 'so far ' : ''}
                  {formatBytes(bytes.bytesWire ?? 0)} on the wire · {formatBytes(bytes.bytesRaw ?? 0)} raw
                  {rate != null ? ` · ${formatRate(rate)}` : ''}
                </span>
              ) : null}
              {s.phase === 'post_copy' && s.state === 'current' && migration.postCopyBytesRemaining != null ? (
                <span className="text-xs tabular-nums text-slate-600 dark:text-slate-300" data-testid="post-copy-remaining">
                  {formatBytes(migration.postCopyBytesRemaining)} of memory still to come
                </span>
              ) : null}
              <span className="w-16 text-right text-xs tabular-nums text-slate-500 dark:text-slate-400">
                {took != null ? formatMs(took) : s.state === 'current' && s.at != null ? formatMs(Math.max(0, now - s.at)) : ''}
              </span>
            </li>
          );
        })}
      </ol>
      {running ? (
        <p className="mt-2 text-xs text-slate-500 dark:text-slate-400">Running for {formatMs(Math.max(0, elapsed))}…</p>
      ) : null}
    </div>
  );
}

/** The red box's first line: what a rollback or failure left behind. */
function failureTitle(m: Migration): string {
  const what = m.mode === 'failover' ? 'Failover' : m.mode === 'restore' ? 'Restore' : 'Migration';
  if (m.status !== 'rolled_back') return `${what} failed.`;
  return isFromCheckpoint(m.mode) ? `Rolled back — nothing was restored on ${m.targetServerId}.` : 'Rolled back — the process still runs on the source.';
}

export function MigrationDetail({ migration: m, events, processName }: Props) {
  const final = isFinal(m.status);
  const failed = m.status === 'failed' || m.status === 'rolled_back';
  return (
    <div className="space-y-3" data-testid="migration-detail" data-migration-id={m.id} data-status={m.status}>
      <div className="flex items-start justify-between gap-2">
        <div className="min-w-0 flex-1">
          <div className="truncate text-sm font-semibold">
            {processName ?? m.processId}{' '}
            <span className="font-mono font-normal text-slate-500 dark:text-slate-400">
              {m.sourceServerId} → {m.targetServerId}
            </span>
          </div>
          <div className="truncate font-mono text-[11px] text-slate-500 dark:text-slate-400">
            {m.id} · {modeStyle(m.mode).label} · started {formatTime(m.startedAt)}
            {m.finishedAt ? ` · finished ${formatTime(m.finishedAt)}` : ''}
          </div>
        </div>
        <div className="flex shrink-0 items-center gap-1.5">
          {isFromCheckpoint(m.mode) ? <MigrationModeBadge mode={m.mode} /> : null}
          <MigrationStatusBadge status={m.status} />
        </div>
      </div>
      {failed ? (
        <Alert tone="error" data-testid="migration-error">
          <div className="font-semibold">{failureTitle(m)}</div>
          <div className="mt-1 break-words whitespace-pre-wrap">{m.error || 'No error was reported.'}</div>
        </Alert>
      ) : null}
      {final && m.status === 'completed' ? (
        <PhaseTimeline migration={m} />
      ) : final ? (
        <>
          <LiveProgress migration={m} events={events} />
          {(m.phases?.length ?? 0) > 0 ? <PhaseTimeline migration={m} /> : null}
        </>
      ) : (
        <LiveProgress migration={m} events={events} />
      )}
    </div>
  );
}
