import { authHeaders } from './auth';
import { connection } from './connection';

/** A failed API call: `status` 0 means the gateway could not be reached at all. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;

  constructor(status: number, code: string, message: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

export const READ_ONLY_MESSAGE = 'Your token is read-only: it can look, but not change anything.';
export const UNREACHABLE_MESSAGE = 'The gateway is unreachable.';

/**
 * The error a response body describes. The gateway answers `{"error":{"code","message"}}`;
 * anything else (a proxy's page, plain text) is summarised by its status.
 */
export function extractApiError(status: number, body: string, statusText = ''): ApiError {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    parsed = undefined;
  }
  const err = (parsed as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
  if (err && typeof err === 'object') {
    const code = typeof err.code === 'string' ? err.code : `http_${status}`;
    const message = typeof err.message === 'string' && err.message ? err.message : `HTTP ${status}`;
    if (status === 403) return new ApiError(status, code, `${READ_ONLY_MESSAGE} (${message})`);
    return new ApiError(status, code, message);
  }
  if (status === 401) return new ApiError(401, 'unauthorized', 'A token is required.');
  if (status === 403) return new ApiError(403, 'forbidden', READ_ONLY_MESSAGE);
  const text = body.trim().slice(0, 200);
  return new ApiError(status, `http_${status}`, text || `HTTP ${status}${statusText ? ` ${statusText}` : ''}`);
}

/** Words for any error a query or mutation throws. */
export function errorMessage(err: unknown): string {
  if (err instanceof ApiError) return err.message;
  if (err instanceof Error) return err.message;
  if (typeof err === 'string') return err;
  return 'Something went wrong.';
}

/** Whether an error means "the gateway did not answer" (rather than "it said no"). */
export function isUnreachable(err: unknown): boolean {
  return err instanceof ApiError && err.status === 0;
}

type Method = 'GET' | 'POST' | 'DELETE';

export async function request<T>(method: Method, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json', ...authHeaders() };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    connection.setFetchDown(true);
    throw new ApiError(0, 'unreachable', UNREACHABLE_MESSAGE);
  }
  const text = await res.text().catch(() => '');
  if (res.ok) {
    connection.setFetchDown(false);
    connection.setAuthRequired(false);
    return (text ? JSON.parse(text) : undefined) as T;
  }
  const err = extractApiError(res.status, text, res.statusText);
  // A 5xx that is not the gateway's own JSON error comes from something in between (the dev
  // server's proxy, a load balancer) that could not reach the gateway.
  if (res.status >= 500 && err.code.startsWith('http_')) {
    connection.setFetchDown(true);
    throw new ApiError(0, 'unreachable', UNREACHABLE_MESSAGE);
  }
  connection.setFetchDown(false);
  if (res.status === 401) connection.setAuthRequired(true);
  throw err;
}

export const api = {
  get: <T>(path: string) => request<T>('GET', path),
  post: <T>(path: string, body?: unknown) => request<T>('POST', path, body ?? {}),
  delete: <T>(path: string) => request<T>('DELETE', path),
};

/** `?a=1&b=2` from the non-empty values. */
export function query(params: Record<string, string | number | undefined | null>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}
