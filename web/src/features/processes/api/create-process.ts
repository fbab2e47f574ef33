import { useMutation, useQueryClient } from '@tanstack/react-query';
import { api } from '@/lib/api-client';
import { queryKeys } from '@/lib/query-keys';
import type { NewProcess, Process } from '@/types/api';

/** POST /api/processes → 201 with the process. */
export const createProcess = (body: NewProcess) => api.post<Process>('/api/processes', body);

export function useCreateProcess() {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: createProcess,
    onSuccess: () => {
      void qc.invalidateQueries({ queryKey: queryKeys.processes });
      void qc.invalidateQueries({ queryKey: queryKeys.servers });
      void qc.invalidateQueries({ queryKey: queryKeys.overview });
    },
  });
}
