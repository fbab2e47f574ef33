import { useMutation, useQueryClient } from '@tanstack/react-query';
import { api } from '@/lib/api-client';
import { queryKeys } from '@/lib/query-keys';
import type { Checkpoint } from '@/types/api';

/** POST /api/processes/{id}/checkpoints → 201 with the checkpoint, taken now. */
export const takeCheckpoint = (id: string) => api.post<Checkpoint>(`/api/processes/${encodeURIComponent(id)}/checkpoints`);

export function useTakeCheckpoint() {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: takeCheckpoint,
    onSuccess: (c, id) => {
      // Newest first; its checkpoint_taken event may have put it there already.
      qc.setQueryData<Checkpoint[]>(queryKeys.checkpoints(id), (old) => (old ? [c, ...old.filter((x) => x.id !== c.id)] : old));
      void qc.invalidateQueries({ queryKey: queryKeys.checkpoints(id) });
    },
  });
}
