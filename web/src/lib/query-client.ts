import { QueryClient } from '@tanstack/react-query';
import { ApiError } from './api-client';

export function makeQueryClient(): QueryClient {
  return new QueryClient({
    defaultOptions: {
      queries: {
        // Fresh until an event says otherwise: the event stream invalidates what changed.
        staleTime: Infinity,
        refetchOnWindowFocus: true,
        retry: (failures, err) => {
          if (err instanceof ApiError && err.status >= 400 && err.status < 500) return false;
          return failures < 1;
        },
      },
      mutations: { retry: false },
    },
  });
}
