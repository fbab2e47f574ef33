import { useSyncExternalStore } from 'react';

// What the dashboard knows about its link to the gateway: whether plain requests reach it,
// whether the event stream is open, and whether it asked for a token.

export type ConnectionState = {
  /** The last request could not reach the gateway. */
  fetchDown: boolean;
  /** The event stream broke and has not reopened yet. */
  streamDown: boolean;
  /** The event stream has been open at least once since the page loaded. */
  streamSeen: boolean;
  /** The gateway answered 401: a token is needed (or the stored one is wrong). */
  authRequired: boolean;
  /** Bumped whenever the token changes, so the event stream reopens. */
  tokenVersion: number;
};

let state: ConnectionState = {
  fetchDown: false,
  streamDown: false,
  streamSeen: false,
  authRequired: false,
  tokenVersion: 0,
};
const listeners = new Set<() => void>();

function set(patch: Partial<ConnectionState>) {
  const next = { ...state, ...patch };
  if ((Object.keys(patch) as (keyof ConnectionState)[]).every((k) => next[k] === state[k])) return;
  state = next;
  listeners.forEach((l) => l());
}

export const connection = {
  get: () => state,
  subscribe(l: () => void) {
    listeners.add(l);
    return () => {
      listeners.delete(l);
    };
  },
  setFetchDown: (fetchDown: boolean) => set({ fetchDown }),
  setStreamDown: (streamDown: boolean) =>
    set(streamDown ? { streamDown } : { streamDown, streamSeen: true }),
  setAuthRequired: (authRequired: boolean) => set({ authRequired }),
  tokenChanged: () => set({ tokenVersion: state.tokenVersion + 1, authRequired: false }),
  /** For tests. */
  reset() {
    state = { fetchDown: false, streamDown: false, streamSeen: false, authRequired: false, tokenVersion: 0 };
    listeners.forEach((l) => l());
  },
};

export function useConnection(): ConnectionState {
  return useSyncExternalStore(connection.subscribe, connection.get, connection.get);
}

/** Whether the "gateway unreachable" banner should show. */
export function gatewayUnreachable(s: ConnectionState): boolean {
  return !s.authRequired && (s.fetchDown || s.streamDown);
}
