import { useMutation, useQueryClient } from '@tanstack/react-query';
import { api } from '@/lib/api-client';
import { queryKeys } from '@/lib/query-keys';
import type { Process } from '@/types/api';

/** DELETE /api/processes/{id}: SIGTERM, then SIGKILL after the grace period. */
export const stopProcess = (id: string) => api.delete<Process>(`/api/processes/${encodeURIComponent(id)}`);

export function useStopProcess() {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: stopProcess,
    onSuccess: () => {
      void qc.invalidateQueries({ queryKey: queryKeys.processes });
      void qc.invalidateQueries({ queryKey: queryKeys.servers });
      void qc.invalidateQueries({ queryKey: queryKeys.overview });
    },
  });
}
