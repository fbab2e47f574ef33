import { queryOptions, useQuery } from '@tanstack/react-query';
import { api } from '@/lib/api-client';
import { queryKeys } from '@/lib/query-keys';
import type { Process } from '@/types/api';

export const getProcesses = () => api.get<Process[]>('/api/processes');

export const processesQuery = () => queryOptions({ queryKey: queryKeys.processes, queryFn: getProcesses });

export const useProcesses = () => useQuery(processesQuery());
