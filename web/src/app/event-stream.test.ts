import { describe, expect, it } from 'vitest';
import { QueryClient } from '@tanstack/react-query';
import { event, migration, phaseEvent } from '@/test/fixtures';
import { queryKeys } from '@/lib/query-keys';
import type { FerryEvent, Migration } from '@/types/api';
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
});
