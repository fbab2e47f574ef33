import type { Migration } from '@/types/api';
import { formatBytes, formatMs, formatRate } from '@/lib/format';
import { computeTimeline, phaseLabel } from '../utils/timeline';

const barColor: Record<string, string> = {
  preflight: 'bg-slate-400 dark:bg-slate-500',
  freeze: 'bg-indigo-500',
  checkpoint: 'bg-violet-500',
  transfer: 'bg-sky-500',
  restore: 'bg-teal-500',
  commit: 'bg-emerald-500',
  post_copy: 'bg-cyan-500',
  rollback: 'bg-red-500',
};

function Figure({ label, value, testId }: { label: string; value: string; testId?: string }) {
  return (
    <div className="rounded-lg border border-slate-200 px-3 py-2 dark:border-slate-700" data-testid={testId}>
      <div className="text-[11px] font-medium tracking-wide text-slate-500 uppercase dark:text-slate-400">{label}</div>
      <div className="text-sm font-semibold tabular-nums">{value}</div>
    </div>
  );
}

/** A finished migration: one horizontal bar per phase on a shared time axis, and the figures. */
export function PhaseTimeline({ migration }: { migration: Migration }) {
  const t = computeTimeline(migration);
  const total = t.totalMs || 1;
  const pct = (v: number) => `${(v / total) * 100}%`;
  return (
    <div data-testid="phase-timeline" className="space-y-3">
      <div className="grid grid-cols-2 gap-2 sm:grid-cols-4">
        <Figure label="Downtime" value={formatMs(migration.downtimeMs)} testId="figure-downtime" />
        <Figure label="Bytes raw" value={formatBytes(t.bytesRaw)} testId="figure-bytes-raw" />
        <Figure label="Bytes on wire" value={formatBytes(t.bytesWire)} testId="figure-bytes-wire" />
        <Figure label="Transfer rate" value={formatRate(t.transferRate)} />
      </div>
      {t.bars.length === 0 ? (
        <p className="text-sm text-slate-500 dark:text-slate-400">No phase timings were recorded for this migration.</p>
      ) : (
        <div className="space-y-1.5">
          {t.bars.map((b, i) => (
            <div key={`${b.phase}-${i}`} className="grid grid-cols-[7.5rem_1fr_4.5rem] items-center gap-2 text-xs" data-testid="timeline-bar" data-phase={b.phase}>
              <span className="truncate text-slate-600 dark:text-slate-300">{phaseLabel(b.phase)}</span>
              <div className="relative h-4 rounded bg-slate-100 dark:bg-slate-800">
                <div
                  className={`absolute top-0 h-4 rounded ${barColor[b.phase] ?? 'bg-slate-500'}`}
                  style={{ left: pct(b.offsetMs), width: `max(2px, ${pct(b.durationMs)})` }}
                  title={`${phaseLabel(b.phase)}: ${formatMs(b.durationMs)}`}
                />
              </div>
              <span className="text-right tabular-nums">{formatMs(b.durationMs)}</span>
            </div>
          ))}
          {t.downtime ? (
            <div className="grid grid-cols-[7.5rem_1fr_4.5rem] items-center gap-2 text-xs" data-testid="timeline-downtime">
              <span className="font-medium text-red-700 dark:text-red-400">downtime</span>
              <div className="relative h-4 rounded bg-slate-100 dark:bg-slate-800">
                <div
                  className="absolute top-0 h-4 rounded"
                  style={{
                    left: pct(t.downtime.offsetMs),
                    width: `max(2px, ${pct(t.downtime.durationMs)})`,
                    background: 'repeating-linear-gradient(45deg, #ef4444 0 4px, #f87171 4px 8px)',
                  }}
                />
              </div>
              <span className="text-right font-medium tabular-nums">{formatMs(t.downtime.durationMs)}</span>
            </div>
          ) : null}
          <div className="grid grid-cols-[7.5rem_1fr_4.5rem] gap-2 text-[10px] text-slate-400">
            <span />
            <div className="flex justify-between">
              <span>0</span>
              <span>{formatMs(total / 2)}</span>
              <span>{formatMs(total)}</span>
            </div>
            <span />
          </div>
        </div>
      )}
      {t.compression != null ? (
        <p className="text-xs text-slate-500 dark:text-slate-400">
          Compression {t.compression.toFixed(2)}× ({formatBytes(t.bytesRaw)} raw → {formatBytes(t.bytesWire)} on the wire).
        </p>
      ) : null}
    </div>
  );
}
