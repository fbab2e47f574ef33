import { queryOptions, useQuery } from '@tanstack/react-query';
import { api } from '@/lib/api-client';
import { queryKeys } from '@/lib/query-keys';
import type { Process } from '@/types/api';

/** GET /api/processes: live processes; with `all`, ended ones too (kept for a while). */
export const getProcesses = (all = false) => api.get<Process[]>(all ? '/api/processes?all=true' : '/api/processes');

export const processesQuery = (all = false) => queryOptions({ queryKey: queryKeys.processList(all), queryFn: () => getProcesses(all) });

export const useProcesses = (all = false) => useQuery(processesQuery(all));
