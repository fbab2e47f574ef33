import { describe, expect, it } from 'vitest';
import { QueryClient } from '@tanstack/react-query';
import { event, migration, phaseEvent } from '@/test/fixtures';
import { queryKeys } from '@/lib/query-keys';
import type { Checkpoint, FerryEvent, Migration } from '@/types/api';
import { applyEvent } from './event-stream';

function client() {
  return new QueryClient({ defaultOptions: { queries: { staleTime: Infinity, retry: false } } });
}

describe('applyEvent', () => {
  it('appends the event to every cached log list whose filter it matches', () => {
    const qc = client();
    qc.setQueryData(queryKeys.logs({}), [] as FerryEvent[]);
    qc.setQueryData(queryKeys.logs({ process: 'w-1' }), [] as FerryEvent[]);
    qc.setQueryData(queryKeys.logs({ process: 'w-2' }), [] as FerryEvent[]);
    qc.setQueryData(queryKeys.logs({ level: 'error' }), [] as FerryEvent[]);
    const e = event({ processId: 'w-1', level: 'info' });
    applyEvent(qc, e);
    expect(qc.getQueryData(queryKeys.logs({}))).toEqual([e]);
    expect(qc.getQueryData(queryKeys.logs({ process: 'w-1' }))).toEqual([e]);
    expect(qc.getQueryData(queryKeys.logs({ process: 'w-2' }))).toEqual([]);
    expect(qc.getQueryData(queryKeys.logs({ level: 'error' }))).toEqual([]);
  });

  it('invalidates what the event changed, and nothing else', () => {
    const qc = client();
    for (const k of [queryKeys.overview, queryKeys.servers, queryKeys.processes, queryKeys.migrations]) qc.setQueryData(k, []);
    applyEvent(qc, event({ kind: 'node_registered' }));
    const stale = (k: readonly unknown[]) => qc.getQueryState(k)?.isInvalidated;
    expect(stale(queryKeys.servers)).toBe(true);
    expect(stale(queryKeys.overview)).toBe(true);
    expect(stale(queryKeys.processes)).toBe(false);
    expect(stale(queryKeys.migrations)).toBe(false);
    // An offline node's processes become unknown: both process lists are refetched.
    qc.setQueryData(queryKeys.processList(true), []);
    applyEvent(qc, event({ kind: 'node_offline' }));
    expect(stale(queryKeys.processes)).toBe(true);
    expect(stale(queryKeys.processList(true))).toBe(true);
    expect(stale(queryKeys.migrations)).toBe(false);
  });

  it('sets a migration status to the phase at once', () => {
    const qc = client();
    qc.setQueryData<Migration[]>(queryKeys.migrations, [migration({ status: 'pending' }), migration({ id: 'm-2', status: 'pending' })]);
    applyEvent(qc, phaseEvent('m-1', 'checkpoint', 2));
    const list = qc.getQueryData<Migration[]>(queryKeys.migrations) ?? [];
    expect(list.map((m) => m.status)).toEqual(['checkpoint', 'pending']);
    expect(qc.getQueryState(queryKeys.migrations)?.isInvalidated).toBe(true);
  });

  it("checkpoint_taken refreshes that process's checkpoints only, and is logged when the gateway kept it", () => {
    const qc = client();
    const stale = (k: readonly unknown[]) => qc.getQueryState(k)?.isInvalidated;
    for (const k of [queryKeys.overview, queryKeys.servers, queryKeys.processes, queryKeys.migrations]) qc.setQueryData(k, []);
    qc.setQueryData(queryKeys.checkpoints('w-1'), [] as Checkpoint[]);
    qc.setQueryData(queryKeys.checkpoints('w-2'), [] as Checkpoint[]);
    qc.setQueryData(queryKeys.logs({}), [] as FerryEvent[]);
    const data = { checkpointId: 'c-0123456789ab', seq: 3, bytes: 123456, freezeMs: 42, holders: ['node0', 's3'] };
    // Live only (no id): not a log entry.
    applyEvent(qc, event({ id: 0, kind: 'checkpoint_taken', processId: 'w-1', message: '', data }));
    expect(stale(queryKeys.checkpoints('w-1'))).toBe(true);
    expect(stale(queryKeys.checkpoints('w-2'))).toBe(false);
    for (const k of [queryKeys.overview, queryKeys.servers, queryKeys.processes, queryKeys.migrations]) expect(stale(k)).toBe(false);
    expect(qc.getQueryData(queryKeys.logs({}))).toEqual([]);
    const kept = event({ kind: 'checkpoint_taken', processId: 'w-1', message: 'checkpoint 3 of w-1', data });
    applyEvent(qc, kept);
    expect(qc.getQueryData(queryKeys.logs({}))).toEqual([kept]);
  });

  it('failover_completed refreshes processes, migrations and the checkpoints, and shows in the system logs', () => {
    const qc = client();
    const stale = (k: readonly unknown[]) => qc.getQueryState(k)?.isInvalidated;
    for (const k of [queryKeys.overview, queryKeys.servers, queryKeys.processList(false), queryKeys.migrations, queryKeys.drains]) qc.setQueryData(k, []);
    qc.setQueryData(queryKeys.checkpoints('w-1'), [] as Checkpoint[]);
    qc.setQueryData(queryKeys.checkpoints('w-2'), [] as Checkpoint[]);
    qc.setQueryData(queryKeys.logs({}), [] as FerryEvent[]);
    qc.setQueryData(queryKeys.logs({ process: 'w-1' }), [] as FerryEvent[]);
    qc.setQueryData(queryKeys.logs({ level: 'warn' }), [] as FerryEvent[]);
    const e = event({
      kind: 'failover_completed',
      level: 'warn',
      serverId: 'node1',
      processId: 'w-1',
      message: 'w-1 failed over from node0 to node1 (checkpoint 3)',
      data: { migrationId: 'm-7', checkpointId: 'c-0123456789ab' },
    });
    applyEvent(qc, e);
    for (const k of [queryKeys.processList(false), queryKeys.migrations, queryKeys.checkpoints('w-1'), queryKeys.servers, queryKeys.overview]) expect(stale(k)).toBe(true);
    expect(stale(queryKeys.checkpoints('w-2'))).toBe(false);
    expect(stale(queryKeys.drains)).toBe(false);
    expect(qc.getQueryData(queryKeys.logs({}))).toEqual([e]);
    expect(qc.getQueryData(queryKeys.logs({ process: 'w-1' }))).toEqual([e]);
    expect(qc.getQueryData(queryKeys.logs({ level: 'warn' }))).toEqual([e]);
  });
});
