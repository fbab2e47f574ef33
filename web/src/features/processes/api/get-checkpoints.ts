import { queryOptions, useQuery } from '@tanstack/react-query';
import { api } from '@/lib/api-client';
import { queryKeys } from '@/lib/query-keys';
import type { Checkpoint, CheckpointList } from '@/types/api';

/** GET /api/processes/{id}/checkpoints: the process's checkpoints, newest first. */
export const getCheckpoints = async (id: string): Promise<Checkpoint[]> =>
  (await api.get<CheckpointList>(`/api/processes/${encodeURIComponent(id)}/checkpoints`)).checkpoints;

export const checkpointsQuery = (id: string) => queryOptions({ queryKey: queryKeys.checkpoints(id), queryFn: () => getCheckpoints(id) });

/** Live: checkpoint_taken (and failovers, restores) of the process invalidate it. */
export const useCheckpoints = (id: string) => useQuery(checkpointsQuery(id));
