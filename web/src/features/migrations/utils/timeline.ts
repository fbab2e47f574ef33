import type { FerryEvent, Migration } from '@/types/api';
import { isFinal } from '@/types/api';
import { isPhaseData } from '@/lib/events';
import { mbPerSecond } from '@/lib/format';
import { isFromCheckpoint, isPostCopy } from './modes';

/** The order phases run in (the cooperative engine checkpoints before it freezes). */
export const PHASE_ORDER = ['preflight', 'freeze', 'checkpoint', 'transfer', 'restore', 'commit'] as const;

/** The phases a restore or failover is expected to show (a checkpoint is fetched, then restored). */
export const CHECKPOINT_PHASE_ORDER = ['preflight', 'transfer', 'restore', 'commit'] as const;

export const PHASE_LABELS: Record<string, string> = {
  pending: 'pending',
  preflight: 'preflight',
  freeze: 'freeze',
  checkpoint: 'checkpoint / dump',
  transfer: 'transfer',
  restore: 'restore',
  commit: 'commit',
  post_copy: 'post-copy pages',
  rollback: 'rollback',
};

export function phaseLabel(p: string): string {
  return PHASE_LABELS[p] ?? p.replace(/_/g, ' ');
}

export type TimelineBar = {
  phase: string;
  /** ms from the migration's first phase. */
  offsetMs: number;
  durationMs: number;
};

export type Timeline = {
  bars: TimelineBar[];
  totalMs: number;
  /** Where the downtime (freeze → running on the target) lies, when known. */
  downtime: { offsetMs: number; durationMs: number } | null;
  bytesRaw: number | null;
  bytesWire: number | null;
  /** Wire bytes over the transfer phase, MB/s. */
  transferRate: number | null;
  /** raw / wire. */
  compression: number | null;
};

const ms = (iso: string | null | undefined): number | null => {
  if (!iso) return null;
  const t = Date.parse(iso);
  // An unfinished phase's end is reported as the epoch.
  return Number.isNaN(t) || t <= 0 ? null : t;
};

/**
 * The horizontal-bar timeline of a migration: from its `phases` list when the API gives one,
 * else laid end to end from the freeze/dump/transfer/restore figures.
 */
export function computeTimeline(m: Migration): Timeline {
  const bars: TimelineBar[] = [];
  // The end markers (a zero-length "rolled_back" entry) are no phase to draw.
  const phases = (m.phases ?? []).filter((p) => ms(p.startedAt) != null && !isFinal(p.phase));
  let downtime: Timeline['downtime'] = null;

  if (phases.length > 0) {
    const starts = phases.map((p) => ms(p.startedAt) as number);
    const t0 = Math.min(...starts);
    const fallbackEnd = ms(m.finishedAt);
    phases.forEach((p, i) => {
      const start = starts[i];
      const end = ms(p.endedAt) ?? (i + 1 < phases.length ? starts[i + 1] : fallbackEnd) ?? start;
      bars.push({ phase: p.phase, offsetMs: start - t0, durationMs: Math.max(0, end - start) });
    });
    const freeze = bars.find((b) => b.phase === 'freeze');
    if (m.downtimeMs != null && m.downtimeMs > 0) {
      downtime = { offsetMs: freeze?.offsetMs ?? 0, durationMs: m.downtimeMs };
    }
  } else {
    let at = 0;
    const parts: [string, number | null][] = [
      ['freeze', m.freezeMs],
      ['checkpoint', m.dumpMs],
      ['transfer', m.transferMs],
      ['restore', m.restoreMs],
    ];
    for (const [phase, d] of parts) {
      if (d == null) continue;
      bars.push({ phase, offsetMs: at, durationMs: Math.max(0, d) });
      at += Math.max(0, d);
    }
    if (m.downtimeMs != null && m.downtimeMs > 0) downtime = { offsetMs: 0, durationMs: m.downtimeMs };
  }

  const ends = bars.map((b) => b.offsetMs + b.durationMs);
  if (downtime) ends.push(downtime.offsetMs + downtime.durationMs);
  const totalMs = ends.length ? Math.max(...ends) : 0;
  const transferMs = m.transferMs ?? bars.find((b) => b.phase === 'transfer')?.durationMs ?? null;
  return {
    bars,
    totalMs,
    downtime,
    bytesRaw: m.bytesRaw,
    bytesWire: m.bytesWire,
    transferRate: mbPerSecond(m.bytesWire, transferMs),
    compression: m.bytesRaw && m.bytesWire ? m.bytesRaw / m.bytesWire : null,
  };
}

export type LiveStep = {
  phase: string;
  state: 'done' | 'current' | 'pending' | 'failed';
  /** When the phase began (its event's time), ms since the epoch. */
  at: number | null;
  bytesRaw: number | null;
  bytesWire: number | null;
};

/** Phase events of one migration, in the order they ran. */
export function phaseEvents(events: FerryEvent[], migrationId: string): FerryEvent[] {
  return events
    .filter((e) => e.kind === 'migration_phase' && isPhaseData(e.data) && e.data.migrationId === migrationId)
    .sort((a, b) => a.id - b.id);
}

/**
 * The live stepper: every phase an event announced (done, or current while the migration runs),
 * then the phases still to come for its mode.
 */
export function liveSteps(m: Migration, events: FerryEvent[]): LiveStep[] {
  const seen = phaseEvents(events, m.id);
  const steps: LiveStep[] = [];
  for (const e of seen) {
    if (!isPhaseData(e.data)) continue;
    const d = e.data;
    // The end (completed, rolled_back, failed) is the status, not a phase.
    if (isFinal(d.phase) || steps.some((s) => s.phase === d.phase)) continue;
    // The agent's own start time when the migration reports it (events are announced in
    // batches when phases are fast), else when the event arrived.
    const start =
      ms(m.phases?.find((p) => p.phase === d.phase)?.startedAt) ??
      (typeof d.startedAtMs === 'number' && d.startedAtMs > 0 ? d.startedAtMs : null);
    steps.push({ phase: d.phase, state: 'done', at: start ?? Date.parse(e.at), bytesRaw: d.bytesRaw, bytesWire: d.bytesWire });
  }
  // The status names the phase in progress even before its event arrived here.
  if (!isFinal(m.status) && m.status !== 'pending' && !steps.some((s) => s.phase === m.status)) {
    steps.push({ phase: m.status, state: 'done', at: null, bytesRaw: null, bytesWire: null });
  }
  const final = isFinal(m.status);
  if (steps.length > 0) {
    const last = steps[steps.length - 1];
    if (!final) {
      last.state = 'current';
      // During the transfer the migration carries the bytes moved so far (migration_progress).
      if (last.phase === 'transfer') {
        if (m.bytesRaw != null) last.bytesRaw = m.bytesRaw;
        if (m.bytesWire != null) last.bytesWire = m.bytesWire;
      }
    }
    else if (m.status !== 'completed') {
      // The phase that failed is the one the rollback followed (else the last one seen).
      const rb = steps.findIndex((s) => s.phase === 'rollback');
      (rb > 0 ? steps[rb - 1] : last).state = 'failed';
    }
  }
  if (!final) {
    // A restore or failover starts from a stored checkpoint: nothing to freeze or dump first.
    const expected: string[] = isFromCheckpoint(m.mode) ? [...CHECKPOINT_PHASE_ORDER] : [...PHASE_ORDER];
    if (isPostCopy(m.mode)) expected.push('post_copy');
    for (const p of expected) {
      if (!steps.some((s) => s.phase === p)) steps.push({ phase: p, state: 'pending', at: null, bytesRaw: null, bytesWire: null });
    }
  }
  return steps;
}

/** A phase's exact duration from the migration's `phases` list (known once it ended). */
export function phaseDuration(m: Migration, phase: string): number | null {
  const p = m.phases?.find((x) => x.phase === phase);
  const a = ms(p?.startedAt);
  const b = ms(p?.endedAt);
  return a != null && b != null ? Math.max(0, b - a) : null;
}

/**
 * Wire MB/s of the transfer: while it runs, the bytes so far (migration_progress) over the time
 * since it began (`now`); once done, the bytes the next phase's event reports over the time
 * between the two events. Null when the events came in one batch.
 */
export function liveTransferRate(steps: LiveStep[], now?: number): number | null {
  const i = steps.findIndex((s) => s.phase === 'transfer');
  if (i < 0) return null;
  const t = steps[i];
  if (t.state === 'current') {
    // In flight: the bytes so far over the time since the transfer began.
    if (now == null || t.at == null || t.bytesWire == null) return null;
    const took = now - t.at;
    return took > 0 ? mbPerSecond(t.bytesWire, took) : null;
  }
  const next = steps[i + 1];
  if (!next || next.state === 'pending' || next.at == null || t.at == null || next.bytesWire == null) return null;
  const took = next.at - t.at;
  return took > 0 ? mbPerSecond(next.bytesWire, took) : null;
}
