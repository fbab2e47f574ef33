import { describe, expect, it } from 'vitest';
import { event } from '@/test/fixtures';
import { appendEvent, matchesFilter, searchEvents } from './filter';

describe('log filtering', () => {
  it('matches by process and level like GET /api/logs', () => {
    const e = event({ processId: 'w-1', level: 'warn' });
    expect(matchesFilter(e, {})).toBe(true);
    expect(matchesFilter(e, { process: 'w-1' })).toBe(true);
    expect(matchesFilter(e, { process: 'w-2' })).toBe(false);
    expect(matchesFilter(e, { level: 'warn' })).toBe(true);
    expect(matchesFilter(e, { level: 'error' })).toBe(false);
    expect(matchesFilter(e, { process: 'w-1', level: 'error' })).toBe(false);
  });

  it('appends matching events once, in id order, keeping the newest `limit`', () => {
    const a = event({ id: 1 });
    const b = event({ id: 2 });
    const c = event({ id: 3 });
    let list = appendEvent([], b, {});
    list = appendEvent(list, c, {});
    list = appendEvent(list, a, {});
    expect(list.map((e) => e.id)).toEqual([1, 2, 3]);
    expect(appendEvent(list, b, {})).toBe(list);
    expect(appendEvent(list, event({ id: 4, level: 'info' }), { level: 'error' })).toBe(list);
    expect(appendEvent(list, event({ id: 5 }), { limit: 2 }).map((e) => e.id)).toEqual([3, 5]);
  });

  it('searches message, kind, node and process', () => {
    const list = [
      event({ id: 1, message: 'process w-1 started on node0', kind: 'process_started' }),
      event({ id: 2, message: 'migration m-1 completed', kind: 'migration_completed', serverId: 'node1', processId: 'w-9' }),
    ];
    expect(searchEvents(list, '').length).toBe(2);
    expect(searchEvents(list, 'COMPLETED').map((e) => e.id)).toEqual([2]);
    expect(searchEvents(list, 'node1').map((e) => e.id)).toEqual([2]);
    expect(searchEvents(list, 'w-9').map((e) => e.id)).toEqual([2]);
    expect(searchEvents(list, 'nothing')).toEqual([]);
  });
});
