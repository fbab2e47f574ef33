import { useMutation, useQueryClient } from '@tanstack/react-query';
import { api } from '@/lib/api-client';
import { queryKeys } from '@/lib/query-keys';
import type { Server } from '@/types/api';

/** POST /api/servers/{id}/cordon (schedulable: false) or /uncordon (true). */
export const setSchedulable = ({ id, schedulable }: { id: string; schedulable: boolean }) =>
  api.post<Server>(`/api/servers/${encodeURIComponent(id)}/${schedulable ? 'uncordon' : 'cordon'}`);

export function useSetSchedulable() {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: setSchedulable,
    onSuccess: (s) => {
      qc.setQueryData<Server[]>(queryKeys.servers, (old) => old?.map((x) => (x.id === s.id ? s : x)));
      void qc.invalidateQueries({ queryKey: queryKeys.servers });
    },
  });
}
