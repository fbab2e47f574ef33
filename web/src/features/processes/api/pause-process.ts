import { useMutation, useQueryClient } from '@tanstack/react-query';
import { api } from '@/lib/api-client';
import { queryKeys } from '@/lib/query-keys';
import type { Process } from '@/types/api';

/** POST /api/processes/{id}/pause. */
export const pauseProcess = (id: string) => api.post<Process>(`/api/processes/${encodeURIComponent(id)}/pause`);

export function usePauseProcess() {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: pauseProcess,
    onSuccess: () => void qc.invalidateQueries({ queryKey: queryKeys.processes }),
  });
}
