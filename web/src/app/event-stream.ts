import { useEffect } from 'react';
import { useQueryClient, type QueryClient } from '@tanstack/react-query';
import type { FerryEvent, Migration } from '@/types/api';
import { EVENT_KINDS, isPhaseData, isProgressData, parseEvent, queryKeysFor } from '@/lib/events';
import { queryKeys, type LogFilter } from '@/lib/query-keys';
import { connection, useConnection } from '@/lib/connection';
import { eventsUrl } from '@/lib/auth';
import { api } from '@/lib/api-client';
import { appendEvent } from '@/features/logs/utils/filter';

/**
 * What one event does to the cache: it joins every cached system-log list it matches, a phase
 * event sets its migration's status at once, and the queries it makes stale are invalidated.
 */
export function applyEvent(qc: QueryClient, e: FerryEvent): void {
  // Heartbeats and progress refresh figures; they are not log entries (the gateway does not
  // keep them). A checkpoint is one when the gateway kept it (a live-only event has no id).
  const logged = e.kind !== 'node_heartbeat' && e.kind !== 'migration_progress' && !(e.kind === 'checkpoint_taken' && !e.id);
  if (e.kind === 'migration_progress' && isProgressData(e.data)) {
    const { migrationId, bytesRaw, bytesWire, postCopyBytesRemaining } = e.data;
    const setBytes = (m: Migration) =>
      m.id === migrationId
        ? { ...m, bytesRaw, bytesWire, postCopyBytesRemaining: postCopyBytesRemaining ?? m.postCopyBytesRemaining }
        : m;
    qc.setQueryData<Migration[]>(queryKeys.migrations, (old) => old?.map(setBytes));
    qc.setQueryData<Migration>(queryKeys.migration(migrationId), (old) => (old ? setBytes(old) : old));
  }
  for (const q of logged ? qc.getQueryCache().findAll({ queryKey: queryKeys.logsRoot }) : []) {
    const filter = (q.queryKey[1] ?? {}) as LogFilter;
    qc.setQueryData<FerryEvent[]>(q.queryKey, (old) => (old ? appendEvent(old, e, filter) : old));
  }
  if (e.kind === 'migration_phase' && isPhaseData(e.data)) {
    const { migrationId, phase } = e.data;
    const setStatus = (m: Migration) => (m.id === migrationId ? { ...m, status: phase } : m);
    qc.setQueryData<Migration[]>(queryKeys.migrations, (old) => old?.map(setStatus));
  }
  for (const key of queryKeysFor(e)) {
    void qc.invalidateQueries({ queryKey: key });
  }
}

const MAX_BACKOFF_MS = 10_000;

/**
 * Keeps one EventSource on /api/events open for the page's lifetime and feeds each event to the
 * query cache. When the stream breaks it is reopened (with backoff when the browser gave up);
 * when it opens again after a break, everything is refetched, since events may have been missed.
 */
export function useEventStream(): void {
  const qc = useQueryClient();
  const { tokenVersion, authRequired } = useConnection();

  useEffect(() => {
    if (authRequired) return;
    let es: EventSource | null = null;
    let retry: ReturnType<typeof setTimeout> | undefined;
    let downTimer: ReturnType<typeof setTimeout> | undefined;
    let backoff = 1000;
    let broken = false;
    let closed = false;

    const onEvent = (msg: MessageEvent<string>) => {
      const e = parseEvent(msg.data);
      if (e) applyEvent(qc, e);
    };

    const open = () => {
      es = new EventSource(eventsUrl());
      es.onopen = () => {
        backoff = 1000;
        clearTimeout(downTimer);
        connection.setStreamDown(false);
        if (broken) {
          broken = false;
          void qc.invalidateQueries();
        }
      };
      es.onerror = () => {
        broken = true;
        // A short blip (the browser reconnects at once) is not worth a banner.
        clearTimeout(downTimer);
        downTimer = setTimeout(() => {
          if (!closed && es?.readyState !== EventSource.OPEN) connection.setStreamDown(true);
        }, 1500);
        if (es?.readyState === EventSource.CLOSED) {
          // The browser gave up (an HTTP error such as 401, or a proxy's error page): ask the
          // API why (a 401 shows the login screen), and try again later.
          void api.get('/api/overview').catch(() => undefined);
          es.close();
          retry = setTimeout(open, backoff);
          backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
        }
      };
      es.onmessage = onEvent;
      for (const kind of EVENT_KINDS) es.addEventListener(kind, onEvent as EventListener);
    };

    open();
    return () => {
      closed = true;
      clearTimeout(retry);
      clearTimeout(downTimer);
      es?.close();
    };
  }, [qc, tokenVersion, authRequired]);
}
