import { useMutation, useQueryClient } from '@tanstack/react-query';
import { api } from '@/lib/api-client';
import { queryKeys } from '@/lib/query-keys';
import type { Process } from '@/types/api';

/** POST /api/processes/{id}/resume. */
export const resumeProcess = (id: string) => api.post<Process>(`/api/processes/${encodeURIComponent(id)}/resume`);

export function useResumeProcess() {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: resumeProcess,
    onSuccess: () => void qc.invalidateQueries({ queryKey: queryKeys.processes }),
  });
}
