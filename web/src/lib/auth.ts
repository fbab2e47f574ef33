// The gateway's bearer token, kept in localStorage as `ferry.token`.

export const TOKEN_KEY = 'ferry.token';

export function getToken(): string | null {
  try {
    const t = localStorage.getItem(TOKEN_KEY);
    return t && t.trim() ? t.trim() : null;
  } catch {
    return null;
  }
}

export function setToken(token: string): void {
  localStorage.setItem(TOKEN_KEY, token.trim());
}

export function clearToken(): void {
  localStorage.removeItem(TOKEN_KEY);
}

/** Headers for a request: `Authorization: Bearer <token>` when a token is stored. */
export function authHeaders(token: string | null = getToken()): Record<string, string> {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** The event stream's URL: EventSource cannot send headers, so the token rides in the query. */
export function eventsUrl(token: string | null = getToken()): string {
  return token ? `/api/events?token=${encodeURIComponent(token)}` : '/api/events';
}
