// The gateway's JSON shapes (gateway/openapi.json, gateway/src/api.rs). JSON is camelCase.

export type Overview = {
  totalProcesses: number;
  runningProcesses: number;
  activeMigrations: number;
  serverNodes: number;
  onlineNodes: number;
  /** completed / finished migrations, 0..1; null before any migration finished. */
  successRate: number | null;
  averageDowntimeMs: number | null;
};

export type Server = {
  id: string;
  name: string;
  address: string;
  status: 'online' | 'offline';
  cpuPercent: number;
  memoryTotalBytes: number;
  memoryUsedBytes: number;
  processCount: number;
  criuVersion: string;
  kernel: string;
  lastSeenAt: string;
  /** False once cordoned (or draining): nothing new is placed on it or migrated into it. */
  schedulable: boolean;
};

/**
 * running, paused; migrating (a migration of it has not ended); unknown (its node is offline:
 * the last report, at lastSeen, may no longer be true); held (the only report is a migration
 * target's stopped copy waiting for the commit); exited, failed (ended: listed only with
 * ?all=true, kept for a while after they ended).
 */
export type ProcessStatus = 'running' | 'paused' | 'migrating' | 'held' | 'unknown' | 'exited' | 'failed';

/** Whether a process has ended (hidden from the list unless asked for). */
export const isEnded = (s: ProcessStatus) => s === 'exited' || s === 'failed';
export type Engine = 'criu' | 'cooperative' | 'auto';

export type Process = {
  id: string;
  name: string;
  serverId: string;
  status: ProcessStatus;
  pid: number;
  cpuPercent: number;
  memoryBytes: number;
  engine: Engine;
  command: string[];
  startedAt: string;
  exitCode: number | null;
  exitSignal: number | null;
  /** When its node last reported (its last heartbeat); null if the node is no longer known. */
  lastSeen: string | null;
  /** For a held copy: the migration whose commit it waits for. */
  heldForMigration: string | null;
  /** Its own IPv4 address (network "own"), which moves with it on migration; null on the node's network. */
  address: string | null;
  /** Protected: a checkpoint is taken every so many seconds (and it fails over from them);
   * absent or null when it is not. */
  checkpointIntervalSeconds?: number | null;
};

/** own: a network namespace and an address of its own from the cluster's workload range; node: the node's network. */
export type Network = 'node' | 'own';

export type NewProcess = {
  name: string;
  command: string[];
  /** Omitted: the coordinator places it on the least loaded schedulable node with the memory. */
  serverId?: string;
  /** Memory it needs, for placement (default 64 MiB). */
  memoryBytes?: number;
  cwd?: string;
  env?: Record<string, string>;
  engine?: Engine;
  /** Omitted: the coordinator's --default-network. */
  network?: Network;
  /** 5 to 86400; omitted: unprotected (no periodic checkpoints, no failover). */
  checkpointIntervalSeconds?: number;
};

export type MigrationMode = 'stop-and-copy' | 'post-copy' | 'auto';

export type NewMigration = {
  processId: string;
  /** Omitted: placed by the coordinator, never on the source. */
  targetServerId?: string;
  sourceServerId?: string;
  mode?: MigrationMode;
};

export type PhaseTiming = {
  phase: string;
  startedAt: string;
  endedAt: string;
};

export const FINAL_STATUSES = ['completed', 'rolled_back', 'failed'] as const;
export type FinalStatus = (typeof FINAL_STATUSES)[number];

export type Migration = {
  id: string;
  processId: string;
  sourceServerId: string;
  targetServerId: string;
  /** A MigrationMode; also "restore" (POST /api/processes/{id}/restore) and "failover" (its
   * node was lost and it was restored from its latest checkpoint elsewhere). */
  mode: string;
  /** pending, then the phase it is in, then completed | rolled_back | failed. */
  status: string;
  error: string | null;
  freezeMs: number | null;
  dumpMs: number | null;
  transferMs: number | null;
  restoreMs: number | null;
  downtimeMs: number | null;
  bytesRaw: number | null;
  bytesWire: number | null;
  /** Post-copy only: memory still to arrive on the target (live while it runs). */
  postCopyBytesRemaining?: number | null;
  phases?: PhaseTiming[];
  startedAt: string;
  finishedAt: string | null;
};

/** A checkpoint of a process (GET /api/processes/{id}/checkpoints, newest first). */
export type Checkpoint = {
  id: string;
  seq: number;
  takenAt: string;
  /** Stored (compressed) size. */
  bytes: number;
  /** The image's size before compression. */
  rawBytes: number;
  /** How long the process was frozen for it. */
  freezeMs: number;
  /** The node it was taken on. */
  node: string;
  /** Where copies are kept: node ids, and "s3" for the object store. */
  holders: string[];
};

export type CheckpointList = { checkpoints: Checkpoint[] };

/** POST /api/processes/{id}/restore's body; both omitted: the newest checkpoint, placed by the coordinator. */
export type NewRestore = {
  checkpointId?: string;
  serverId?: string;
};

/** checkpoint_taken's data. */
export type CheckpointTakenData = {
  checkpointId: string;
  seq: number;
  bytes: number;
  freezeMs: number;
  holders: string[];
};

/** POST /api/servers/{id}/drain's body (optional). */
export type NewDrain = {
  /** 1 to 86400; omitted: no deadline. */
  deadlineSeconds?: number;
};

export type DrainWorkload = {
  processId: string;
  /** Resident memory when the drain was planned. */
  memoryBytes: number;
  mode: 'stop-and-copy' | 'post-copy';
  targetServerId: string | null;
  migrationId: string | null;
  /** pending, migrating, completed, rolled_back, failed, or ended (it ended on its own). */
  status: string;
  error: string | null;
};

/** A drain: the node cordoned, then its workloads migrated off (GET /api/drains/{id}). */
export type Drain = {
  id: string;
  serverId: string;
  /** completed: nothing left on the node; failed: something is, or the coordinator restarted. */
  status: 'running' | 'completed' | 'failed';
  deadlineSeconds: number | null;
  estimateMs: number;
  /** Whether the plan's estimate is within the deadline (when not, message says so). */
  fits: boolean;
  concurrency: number;
  message: string | null;
  /** Largest first, the order their migrations start in. */
  workloads: DrainWorkload[];
  startedAt: string;
  endedAt: string | null;
};

export type LogLine = {
  line: number;
  at: string;
  stream: 'stdout' | 'stderr';
  text: string;
};

export type ProcessLogs = {
  lines: LogLine[];
  next: number;
};

export type EventLevel = 'info' | 'warn' | 'error';

/** A system event: a row of GET /api/logs and the data of each server-sent event. */
export type FerryEvent = {
  id: number;
  at: string;
  kind: string;
  level: EventLevel | string;
  serverId: string;
  processId: string;
  message: string;
  /** Kind-specific; migration_phase carries MigrationPhaseData. */
  data: unknown;
};

export type MigrationPhaseData = {
  migrationId: string;
  phase: string;
  index: number;
  /** When the source agent entered the phase (ms since the epoch). */
  startedAtMs?: number;
  bytesRaw: number;
  bytesWire: number;
};

/** migration_progress (live only): bytes moved so far by a running migration, and in post-copy
 * the bytes of memory still to come from the source. */
export type MigrationProgressData = {
  migrationId: string;
  phase: string;
  bytesRaw: number;
  bytesWire: number;
  postCopyBytesRemaining?: number;
};

export type ApiErrorBody = { error: { code: string; message: string } };

export function isFinal(status: string): status is FinalStatus {
  return (FINAL_STATUSES as readonly string[]).includes(status);
}
