import { useMutation, useQueryClient } from '@tanstack/react-query';
import { api } from '@/lib/api-client';
import { queryKeys } from '@/lib/query-keys';
import type { Drain, NewDrain } from '@/types/api';

/** POST /api/servers/{id}/drain → 202 with the drain's record; its steps arrive as events. */
export const drainServer = ({ id, ...body }: NewDrain & { id: string }) =>
  api.post<Drain>(`/api/servers/${encodeURIComponent(id)}/drain`, body);

export function useDrainServer() {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: drainServer,
    onSuccess: (d) => {
      qc.setQueryData<Drain[]>(queryKeys.drains, (old) => (old ? [...old.filter((x) => x.id !== d.id), d] : old));
      void qc.invalidateQueries({ queryKey: queryKeys.drains });
      void qc.invalidateQueries({ queryKey: queryKeys.servers });
    },
  });
}
