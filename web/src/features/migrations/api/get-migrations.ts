import { queryOptions, useQuery } from '@tanstack/react-query';
import { api } from '@/lib/api-client';
import { queryKeys } from '@/lib/query-keys';
import type { Migration } from '@/types/api';

export const getMigrations = () => api.get<Migration[]>('/api/migrations');

export const migrationsQuery = () => queryOptions({ queryKey: queryKeys.migrations, queryFn: getMigrations });

export const useMigrations = () => useQuery(migrationsQuery());
