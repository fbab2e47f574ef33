import { useMutation, useQueryClient } from '@tanstack/react-query';
import { api } from '@/lib/api-client';
import { queryKeys } from '@/lib/query-keys';
import type { Migration, NewMigration } from '@/types/api';

/** POST /api/migrations → 202 with the pending migration; its phases arrive as events. */
export const createMigration = (body: NewMigration) => api.post<Migration>('/api/migrations', body);

export function useCreateMigration() {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: createMigration,
    onSuccess: (m) => {
      qc.setQueryData<Migration[]>(queryKeys.migrations, (old) =>
        old ? [...old.filter((x) => x.id !== m.id), m] : old,
      );
      void qc.invalidateQueries({ queryKey: queryKeys.migrations });
      void qc.invalidateQueries({ queryKey: queryKeys.processes });
    },
  });
}
