// Every query key the dashboard uses, in one place, so events can name what they change.

export type LogFilter = { process?: string; level?: string; limit?: number };

export const queryKeys = {
  overview: ['overview'] as const,
  servers: ['servers'] as const,
  processes: ['processes'] as const,
  process: (id: string) => ['processes', id] as const,
  /** The process list, with ended ones (`all`) or without. */
  processList: (all: boolean) => ['processes', 'list', { all }] as const,
  processLogs: (id: string) => ['process-logs', id] as const,
  migrations: ['migrations'] as const,
  migration: (id: string) => ['migrations', id] as const,
  drains: ['drains'] as const,
  checkpointsRoot: ['checkpoints'] as const,
  /** A process's checkpoints. */
  checkpoints: (id: string) => ['checkpoints', id] as const,
  logsRoot: ['logs'] as const,
  logs: (f: LogFilter) => ['logs', { process: f.process ?? '', level: f.level ?? '', limit: f.limit ?? 200 }] as const,
};
