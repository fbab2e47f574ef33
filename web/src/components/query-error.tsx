import { ApiError, errorMessage } from '@/lib/api-client';
import { Alert } from './ui/alert';

/**
 * Why a query failed, unless something else already says it: an unreachable gateway has its
 * banner and a 401 its login screen.
 */
export function QueryError({ error, what }: { error: unknown; what: string }) {
  if (!error) return null;
  if (error instanceof ApiError && (error.status === 0 || error.status === 401)) return null;
  return (
    <Alert tone="error" className="mt-2">
      Cannot load {what}: {errorMessage(error)}
    </Alert>
  );
}
