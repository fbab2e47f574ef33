import { queryOptions, useQuery } from '@tanstack/react-query';
import { api } from '@/lib/api-client';
import { queryKeys } from '@/lib/query-keys';
import type { Server } from '@/types/api';

export const getServers = () => api.get<Server[]>('/api/servers');

export const serversQuery = () => queryOptions({ queryKey: queryKeys.servers, queryFn: getServers });

export const useServers = () => useQuery(serversQuery());
