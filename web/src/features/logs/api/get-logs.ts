import { useQuery } from '@tanstack/react-query';
import { api, query } from '@/lib/api-client';
import { queryKeys, type LogFilter } from '@/lib/query-keys';
import type { FerryEvent } from '@/types/api';

/** GET /api/logs?process=&level=&limit=: recent system and migration events, oldest first. */
export const getLogs = (f: LogFilter) =>
  api.get<FerryEvent[]>(`/api/logs${query({ process: f.process, level: f.level, limit: f.limit ?? 200 })}`);

/** The log list for a filter; events arriving on the stream are appended to it (app/event-stream). */
export function useLogs(f: LogFilter, enabled = true) {
  return useQuery({
    queryKey: queryKeys.logs(f),
    queryFn: () => getLogs(f),
    enabled,
  });
}
