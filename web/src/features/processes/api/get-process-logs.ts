import { useQuery, useQueryClient } from '@tanstack/react-query';
import { api, query } from '@/lib/api-client';
import { queryKeys } from '@/lib/query-keys';
import type { ProcessLogs } from '@/types/api';

/** GET /api/processes/{id}/logs?from=&limit=: the process's own stdout and stderr. */
export const getProcessLogs = (id: string, from = 0, limit = 1000) =>
  api.get<ProcessLogs>(`/api/processes/${encodeURIComponent(id)}/logs${query({ from, limit })}`);

const PAGE = 5000;
export const KEEP_LINES = 1000;

/**
 * The newest lines after `prev`: reads on from `prev.next` page by page and keeps the last
 * `keep` lines (a log that started over, `next` going back, is read afresh).
 */
export async function readOn(
  id: string,
  prev: ProcessLogs | undefined,
  get: typeof getProcessLogs = getProcessLogs,
  keep = KEEP_LINES,
): Promise<ProcessLogs> {
  let from = prev?.next ?? 0;
  let lines = prev?.lines ?? [];
  for (let page = 0; page < 50; page += 1) {
    const r = await get(id, from, PAGE);
    if (r.next < from) {
      from = 0;
      lines = [];
      continue;
    }
    lines = lines.concat(r.lines).slice(-keep);
    const done = r.lines.length < PAGE || r.next === from;
    from = r.next;
    if (done) break;
  }
  return { lines, next: from };
}

/**
 * The last lines of a process's output. A process's output has no event of its own, so while
 * `follow` is on (and the panel open) the new lines are read every `followMs`.
 */
export function useProcessLogs(id: string | null, { follow = false, followMs = 2000 } = {}) {
  const qc = useQueryClient();
  const key = queryKeys.processLogs(id ?? '');
  return useQuery({
    queryKey: key,
    queryFn: () => readOn(id ?? '', qc.getQueryData<ProcessLogs>(key)),
    enabled: !!id,
    staleTime: 0,
    gcTime: 0,
    refetchInterval: follow ? followMs : false,
  });
}
