import type { QueryKey } from '@tanstack/react-query';
import type { FerryEvent, MigrationPhaseData, MigrationProgressData } from '@/types/api';
import { queryKeys } from './query-keys';

/** Every event kind the gateway names (GET /api/events sends each as its own SSE event type). */
export const EVENT_KINDS = [
  'node_online',
  'node_offline',
  'node_registered',
  'node_heartbeat',
  'process_started',
  'process_paused',
  'process_resumed',
  'process_stopped',
  'process_exited',
  'migration_started',
  'migration_phase',
  'migration_progress',
  'migration_completed',
  'migration_rolled_back',
  'migration_failed',
  'address_conflict',
  'node_cordoned',
  'node_uncordoned',
  'drain_started',
  'drain_progress',
  'drain_ended',
  'checkpoint_taken',
  'checkpoint_taken_now',
  'checkpoint_unreplicated',
  'failover_started',
  'failover_completed',
  'failover_failed',
  'failover_impossible',
  'failover_blocked',
  'duplicate_fenced',
  'restore_started',
  'restore_completed',
  'restore_failed',
] as const;

/** The queries an event makes stale (prefix keys: ['processes'] covers every process query). */
export function queryKeysFor(e: Pick<FerryEvent, 'kind' | 'processId'>): QueryKey[] {
  const { kind } = e;
  if (kind === 'node_heartbeat') {
    // A node's fresh figures: its load and its workloads' CPU and memory.
    return [queryKeys.servers, queryKeys.overview, queryKeys.processes];
  }
  if (kind === 'node_online' || kind === 'node_offline') {
    // A node's liveness is its processes' too: an offline node's are shown `unknown`.
    return [queryKeys.servers, queryKeys.overview, queryKeys.processes];
  }
  if (kind.startsWith('node_')) {
    return [queryKeys.servers, queryKeys.overview];
  }
  if (kind.startsWith('process_')) {
    return [queryKeys.processes, queryKeys.servers, queryKeys.overview];
  }
  if (kind === 'migration_progress') {
    // Applied to the cached migration directly (applyEvent); nothing to refetch.
    return [];
  }
  if (kind === 'migration_phase') {
    // The migration's status is now the phase name; nothing else moved yet.
    return [queryKeys.migrations];
  }
  if (kind.startsWith('migration_')) {
    // Started: the process shows "migrating". Ended: it may have moved to another node.
    return [queryKeys.migrations, queryKeys.processes, queryKeys.servers, queryKeys.overview];
  }
  if (kind.startsWith('drain_')) {
    // A drain cordons its node and moves its processes: each step may move one.
    return [queryKeys.drains, queryKeys.servers, queryKeys.processes, queryKeys.migrations, queryKeys.overview];
  }
  const checkpoints = e.processId ? queryKeys.checkpoints(e.processId) : queryKeys.checkpointsRoot;
  if (kind.startsWith('checkpoint_')) {
    // One more checkpoint of the process (`processId`); nothing else changed.
    return [checkpoints];
  }
  if (kind.startsWith('failover_') || kind.startsWith('restore_') || kind === 'duplicate_fenced') {
    // A process restored from a checkpoint (on a failover, on another node): its migration
    // (mode failover or restore) moved, and so may the process and its checkpoints' holders.
    return [queryKeys.migrations, queryKeys.processes, queryKeys.servers, queryKeys.overview, checkpoints];
  }
  if (kind === 'address_conflict') {
    // A report carries an address another process holds: the processes show their addresses.
    return [queryKeys.processes];
  }
  // An unknown kind: refresh the figures that every change may touch.
  return [queryKeys.overview];
}

export function isProgressData(d: unknown): d is MigrationProgressData {
  return (
    typeof d === 'object' &&
    d !== null &&
    typeof (d as MigrationProgressData).migrationId === 'string' &&
    typeof (d as MigrationProgressData).bytesRaw === 'number' &&
    typeof (d as MigrationProgressData).bytesWire === 'number'
  );
}

export function isPhaseData(d: unknown): d is MigrationPhaseData {
  return (
    typeof d === 'object' &&
    d !== null &&
    typeof (d as MigrationPhaseData).migrationId === 'string' &&
    typeof (d as MigrationPhaseData).phase === 'string'
  );
}

/** Parses one server-sent event's data; null for anything that is not an event object. */
export function parseEvent(raw: string): FerryEvent | null {
  try {
    const e = JSON.parse(raw) as FerryEvent;
    if (typeof e !== 'object' || e === null || typeof e.kind !== 'string') return null;
    return e;
  } catch {
    return null;
  }
}
