import { describe, expect, it } from 'vitest';
import { migration, phaseEvent } from '@/test/fixtures';
import { computeTimeline, liveSteps, liveTransferRate, phaseDuration } from './timeline';

describe('computeTimeline', () => {
  it('lays the phases out on one time axis from the phases list', () => {
    const t = computeTimeline(migration());
    expect(t.bars.map((b) => b.phase)).toEqual(['preflight', 'freeze', 'checkpoint', 'transfer', 'restore', 'commit']);
    expect(t.bars[0]).toEqual({ phase: 'preflight', offsetMs: 0, durationMs: 4 });
    expect(t.bars[2]).toEqual({ phase: 'checkpoint', offsetMs: 7, durationMs: 44 });
    expect(t.totalMs).toBe(109);
    // Downtime starts with the freeze.
    expect(t.downtime).toEqual({ offsetMs: 4, durationMs: 105 });
    expect(t.bytesRaw).toBe(382238);
    expect(t.compression).toBeCloseTo(382238 / 59749);
    // 59749 bytes in 3 ms.
    expect(t.transferRate).toBeCloseTo(59749 / 1e6 / 0.003);
  });

  it('falls back to the figures when there is no phases list', () => {
    const t = computeTimeline(migration({ phases: undefined }));
    expect(t.bars).toEqual([
      { phase: 'freeze', offsetMs: 0, durationMs: 3 },
      { phase: 'checkpoint', offsetMs: 3, durationMs: 44 },
      { phase: 'transfer', offsetMs: 47, durationMs: 3 },
      { phase: 'restore', offsetMs: 50, durationMs: 50 },
    ]);
    expect(t.downtime).toEqual({ offsetMs: 0, durationMs: 105 });
    expect(t.totalMs).toBe(105);
  });

  it('ends an unfinished phase (epoch end) where the next one starts or the migration finished', () => {
    const t = computeTimeline(
      migration({
        status: 'rolled_back',
        downtimeMs: null,
        phases: [
          { phase: 'preflight', startedAt: '2026-11-27T12:00:00.000Z', endedAt: '2026-11-27T12:00:00.010Z' },
          { phase: 'freeze', startedAt: '2026-11-27T12:00:00.010Z', endedAt: '1970-01-01T00:00:00.000Z' },
          { phase: 'rollback', startedAt: '2026-11-27T12:00:00.050Z', endedAt: '1970-01-01T00:00:00.000Z' },
          { phase: 'rolled_back', startedAt: '2026-11-27T12:00:00.080Z', endedAt: '2026-11-27T12:00:00.080Z' },
        ],
        finishedAt: '2026-11-27T12:00:00.080Z',
      }),
    );
    expect(t.bars.map((b) => [b.phase, b.offsetMs, b.durationMs])).toEqual([
      ['preflight', 0, 10],
      ['freeze', 10, 40],
      ['rollback', 50, 30],
    ]);
    expect(t.downtime).toBeNull();
  });

  it('copes with a migration that has no figures at all', () => {
    const t = computeTimeline(
      migration({ phases: [], freezeMs: null, dumpMs: null, transferMs: null, restoreMs: null, downtimeMs: null, bytesRaw: null, bytesWire: null }),
    );
    expect(t.bars).toEqual([]);
    expect(t.totalMs).toBe(0);
    expect(t.transferRate).toBeNull();
    expect(t.compression).toBeNull();
  });
});

describe('liveSteps', () => {
  const running = migration({ status: 'transfer', phases: [], finishedAt: null });

  it('marks seen phases done, the latest current, and the rest pending', () => {
    const events = [phaseEvent('m-1', 'preflight', 0), phaseEvent('m-1', 'freeze', 1), phaseEvent('m-1', 'checkpoint', 2), phaseEvent('m-1', 'transfer', 3)];
    const steps = liveSteps(running, events);
    expect(steps.map((s) => [s.phase, s.state])).toEqual([
      ['preflight', 'done'],
      ['freeze', 'done'],
      ['checkpoint', 'done'],
      ['transfer', 'current'],
      ['restore', 'pending'],
      ['commit', 'pending'],
    ]);
  });

  it('ignores other migrations and repeated events', () => {
    const events = [phaseEvent('m-1', 'preflight', 0), phaseEvent('m-2', 'freeze', 1), phaseEvent('m-1', 'preflight', 0)];
    const steps = liveSteps(migration({ status: 'preflight', phases: [], finishedAt: null }), events);
    expect(steps.filter((s) => s.state !== 'pending').map((s) => s.phase)).toEqual(['preflight']);
  });

  it('shows the phase the status names even before its event arrived', () => {
    const steps = liveSteps(migration({ status: 'freeze', phases: [], finishedAt: null }), []);
    expect(steps[0]).toMatchObject({ phase: 'freeze', state: 'current' });
  });

  it('adds the post-copy phase for a post-copy migration', () => {
    const steps = liveSteps(migration({ status: 'pending', mode: 'post-copy', phases: [], finishedAt: null }), []);
    expect(steps.map((s) => s.phase)).toContain('post_copy');
  });

  it('marks the phase before the rollback failed when the migration rolled back', () => {
    const events = [
      phaseEvent('m-1', 'preflight', 0),
      phaseEvent('m-1', 'checkpoint', 1),
      phaseEvent('m-1', 'rollback', 2),
      phaseEvent('m-1', 'rolled_back', 3),
    ];
    const steps = liveSteps(migration({ status: 'rolled_back', phases: [] }), events);
    expect(steps.map((s) => [s.phase, s.state])).toEqual([
      ['preflight', 'done'],
      ['checkpoint', 'failed'],
      ['rollback', 'done'],
    ]);
  });

  it('marks the last phase failed when a failed migration did not roll back', () => {
    const events = [phaseEvent('m-1', 'preflight', 0), phaseEvent('m-1', 'commit', 1)];
    const steps = liveSteps(migration({ status: 'failed', phases: [] }), events);
    expect(steps.map((s) => [s.phase, s.state])).toEqual([
      ['preflight', 'done'],
      ['commit', 'failed'],
    ]);
  });

  it('computes the transfer rate from the phase events', () => {
    const events = [
      phaseEvent('m-1', 'transfer', 3, { at: '2026-11-27T12:00:00.000Z', data: { migrationId: 'm-1', phase: 'transfer', index: 3, bytesRaw: 0, bytesWire: 0 } }),
      phaseEvent('m-1', 'restore', 4, { at: '2026-11-27T12:00:02.000Z', data: { migrationId: 'm-1', phase: 'restore', index: 4, bytesRaw: 8e6, bytesWire: 4e6 } }),
    ];
    const steps = liveSteps(migration({ status: 'restore', phases: [], finishedAt: null }), events);
    // 4 MB over 2 s.
    expect(liveTransferRate(steps)).toBeCloseTo(2);
    // While the transfer runs: no rate without the time...
    const bare = liveSteps(migration({ status: 'transfer', phases: [], finishedAt: null, bytesRaw: null, bytesWire: null }), [events[0]]);
    expect(liveTransferRate(bare)).toBeNull();
    // ...and with migration_progress's bytes so far, their rate since the transfer began.
    const running = liveSteps(migration({ status: 'transfer', phases: [], finishedAt: null, bytesRaw: 6e6, bytesWire: 3e6 }), [events[0]]);
    expect(running.find((s) => s.phase === 'transfer')?.bytesWire).toBe(3e6);
    expect(liveTransferRate(running, Date.parse('2026-11-27T12:00:01.000Z'))).toBeCloseTo(3);
  });
});

describe('phaseDuration', () => {
  it('reads a phase duration from the phases list', () => {
    expect(phaseDuration(migration(), 'checkpoint')).toBe(44);
    expect(phaseDuration(migration(), 'post_copy')).toBeNull();
    expect(phaseDuration(migration({ phases: [] }), 'freeze')).toBeNull();
  });
});
