import { describe, expect, it } from 'vitest';
import { EVENT_KINDS, isPhaseData, parseEvent, queryKeysFor } from './events';

const keys = (kind: string) => queryKeysFor({ kind, processId: 'w-1' }).map((k) => k.join('/'));

describe('queryKeysFor', () => {
  it('refreshes nodes and figures on node events, and processes when a node goes offline or comes back', () => {
    expect(keys('node_registered')).toEqual(['servers', 'overview']);
    for (const kind of ['node_online', 'node_offline']) {
      expect(keys(kind)).toEqual(['servers', 'overview', 'processes']);
    }
  });

  it('refreshes processes, nodes and figures on process events', () => {
    for (const kind of ['process_started', 'process_paused', 'process_resumed', 'process_stopped']) {
      expect(keys(kind)).toEqual(['processes', 'servers', 'overview']);
    }
  });

  it('refreshes node and process figures on a heartbeat', () => {
    expect(keys('node_heartbeat')).toEqual(['servers', 'overview', 'processes']);
  });

  it('refreshes only migrations on a phase', () => {
    expect(keys('migration_phase')).toEqual(['migrations']);
  });

  it('refreshes migrations, processes, nodes and figures when a migration starts or ends', () => {
    for (const kind of ['migration_started', 'migration_completed', 'migration_rolled_back', 'migration_failed']) {
      expect(keys(kind)).toEqual(['migrations', 'processes', 'servers', 'overview']);
    }
  });

  it('listens to address conflicts and refreshes the processes on one', () => {
    expect(EVENT_KINDS).toContain('address_conflict');
    expect(keys('address_conflict')).toEqual(['processes']);
  });

  it('refreshes nodes on a cordon, and nodes, processes and migrations on each step of a drain', () => {
    for (const kind of ['node_cordoned', 'node_uncordoned']) {
      expect(EVENT_KINDS).toContain(kind);
      expect(keys(kind)).toEqual(['servers', 'overview']);
    }
    for (const kind of ['drain_started', 'drain_progress', 'drain_ended']) {
      expect(EVENT_KINDS).toContain(kind);
      expect(keys(kind)).toEqual(['drains', 'servers', 'processes', 'migrations', 'overview']);
    }
  });

  it("refreshes only the process's checkpoints when one is taken", () => {
    expect(EVENT_KINDS).toContain('checkpoint_taken');
    expect(keys('checkpoint_taken')).toEqual(['checkpoints/w-1']);
    expect(queryKeysFor({ kind: 'checkpoint_taken', processId: '' }).map((k) => k.join('/'))).toEqual(['checkpoints']);
  });

  it('refreshes migrations, processes, nodes, figures and the checkpoints on failovers and restores', () => {
    for (const kind of [
      'failover_started',
      'failover_completed',
      'failover_failed',
      'failover_impossible',
      'failover_blocked',
      'duplicate_fenced',
      'restore_started',
      'restore_completed',
      'restore_failed',
    ]) {
      expect(EVENT_KINDS).toContain(kind);
      expect(keys(kind)).toEqual(['migrations', 'processes', 'servers', 'overview', 'checkpoints/w-1']);
    }
  });

  it('refreshes the figures on a kind it does not know', () => {
    expect(keys('something_new')).toEqual(['overview']);
  });

  it('listens to every kind it maps', () => {
    for (const k of ['node_online', 'process_started', 'migration_phase', 'migration_rolled_back', 'migration_failed']) {
      expect(EVENT_KINDS).toContain(k);
    }
  });
});

describe('parseEvent', () => {
  it('parses an event and refuses anything else', () => {
    const e = parseEvent('{"id":7,"at":"x","kind":"migration_phase","level":"info","serverId":"node0","processId":"w-1","message":"m","data":{"migrationId":"m-1","phase":"freeze","index":1,"bytesRaw":0,"bytesWire":0}}');
    expect(e?.kind).toBe('migration_phase');
    expect(isPhaseData(e?.data)).toBe(true);
    expect(parseEvent('not json')).toBeNull();
    expect(parseEvent('42')).toBeNull();
    expect(isPhaseData({})).toBe(false);
  });
});
