import { queryOptions, useQuery } from '@tanstack/react-query';
import { api } from '@/lib/api-client';
import { queryKeys } from '@/lib/query-keys';
import type { Overview } from '@/types/api';

export const getOverview = () => api.get<Overview>('/api/overview');

export const overviewQuery = () => queryOptions({ queryKey: queryKeys.overview, queryFn: getOverview });

export const useOverview = () => useQuery(overviewQuery());
