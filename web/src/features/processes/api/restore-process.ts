import { useMutation, useQueryClient } from '@tanstack/react-query';
import { api } from '@/lib/api-client';
import { queryKeys } from '@/lib/query-keys';
import type { Migration, NewRestore } from '@/types/api';

/** POST /api/processes/{id}/restore → 202 with the migration (mode "restore") that restores it;
 * its phases arrive as events. */
export const restoreProcess = ({ id, ...body }: NewRestore & { id: string }) =>
  api.post<Migration>(`/api/processes/${encodeURIComponent(id)}/restore`, body);

export function useRestoreProcess() {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: restoreProcess,
    onSuccess: (m, { id }) => {
      qc.setQueryData<Migration[]>(queryKeys.migrations, (old) => (old ? [...old.filter((x) => x.id !== m.id), m] : old));
      void qc.invalidateQueries({ queryKey: queryKeys.migrations });
      void qc.invalidateQueries({ queryKey: queryKeys.processes });
      void qc.invalidateQueries({ queryKey: queryKeys.checkpoints(id) });
    },
  });
}
