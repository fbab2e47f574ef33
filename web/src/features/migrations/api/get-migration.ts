import { useQuery } from '@tanstack/react-query';
import { api } from '@/lib/api-client';
import { queryKeys } from '@/lib/query-keys';
import type { Migration } from '@/types/api';

/** GET /api/migrations/{id}. */
export const getMigration = (id: string) => api.get<Migration>(`/api/migrations/${encodeURIComponent(id)}`);

export function useMigration(id: string | null) {
  return useQuery({
    queryKey: queryKeys.migration(id ?? ''),
    queryFn: () => getMigration(id ?? ''),
    enabled: !!id,
  });
}
