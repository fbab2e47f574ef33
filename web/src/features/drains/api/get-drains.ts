import { queryOptions, useQuery } from '@tanstack/react-query';
import { api } from '@/lib/api-client';
import { queryKeys } from '@/lib/query-keys';
import type { Drain } from '@/types/api';

/** GET /api/drains: every drain, oldest first. */
export const getDrains = () => api.get<Drain[]>('/api/drains');

export const drainsQuery = () => queryOptions({ queryKey: queryKeys.drains, queryFn: getDrains });

export const useDrains = () => useQuery(drainsQuery());
