import { useState } from 'react';
import { Ban, CheckCircle2, LogOut } from 'lucide-react';
import { Card, CardContent, CardDescription, CardHeader, CardTitle } from '@/components/ui/card';
import { Button } from '@/components/ui/button';
import { Badge } from '@/components/ui/badge';
import { Alert } from '@/components/ui/alert';
import { Input } from '@/components/ui/input';
import { errorMessage } from '@/lib/api-client';
import { formatBytes, formatMs, formatTime } from '@/lib/format';
import type { Drain, Server } from '@/types/api';
import { useSetSchedulable } from '../api/cordon-server';
import { useDrainServer } from '../api/drain-server';
import { parseDeadline } from '../utils/deadline';

type Props = {
  servers: Server[];
  drains: Drain[];
};

const itemTone = (status: string) =>
  status === 'completed' ? 'green' : status === 'migrating' ? 'blue' : status === 'pending' ? 'neutral' : status === 'ended' ? 'neutral' : 'red';

/** One drain: its plan, each workload's step, and how it ended. */
export function DrainProgress({ drain }: { drain: Drain }) {
  const moved = drain.workloads.filter((w) => w.status === 'completed').length;
  return (
    <div className="space-y-2 rounded-lg border border-slate-200 p-3 dark:border-slate-700" data-testid={`drain-${drain.id}`} data-status={drain.status}>
      <div className="flex flex-wrap items-center gap-2 text-sm">
        <span className="font-semibold">Drain of {drain.serverId}</span>
        <Badge tone={drain.status === 'completed' ? 'green' : drain.status === 'running' ? 'blue' : 'red'}>{drain.status}</Badge>
        <span className="text-slate-500 dark:text-slate-400" data-testid="drain-count">
          {moved} of {drain.workloads.length} moved
        </span>
        <span className="text-xs text-slate-500 dark:text-slate-400">
          estimated {formatMs(drain.estimateMs)}
          {drain.deadlineSeconds != null ? ` · deadline ${drain.deadlineSeconds} s` : ''} · started {formatTime(drain.startedAt)}
          {drain.endedAt ? ` · ended ${formatTime(drain.endedAt)}` : ''}
        </span>
      </div>
      {drain.message ? (
        <Alert tone={drain.status === 'failed' ? 'error' : drain.fits ? 'info' : 'warning'} data-testid="drain-message">
          {drain.message}
        </Alert>
      ) : null}
      {drain.workloads.length ? (
        <ul className="space-y-1 text-xs">
          {drain.workloads.map((w) => (
            <li key={w.processId} className="flex flex-wrap items-center gap-2" data-testid="drain-workload" data-status={w.status}>
              <Badge tone={itemTone(w.status)}>{w.status.replace(/_/g, ' ')}</Badge>
              <span className="font-mono">{w.processId}</span>
              <span className="text-slate-500 dark:text-slate-400">
                {formatBytes(w.memoryBytes)} · {w.mode}
                {w.targetServerId ? ` → ${w.targetServerId}` : ''}
                {w.migrationId ? ` · ${w.migrationId}` : ''}
              </span>
              {w.error ? <span className="text-red-700 dark:text-red-300">{w.error}</span> : null}
            </li>
          ))}
        </ul>
      ) : null}
    </div>
  );
}

/** The Drain button asks once more before it moves anything. */
function DrainButton({ onDrain, disabled }: { onDrain: () => void; disabled: boolean }) {
  const [armed, setArmed] = useState(false);
  if (armed) {
    return (
      <span className="flex gap-1">
        <Button size="sm" variant="destructive" onClick={() => { setArmed(false); onDrain(); }} data-action="confirm-drain">
          Confirm drain
        </Button>
        <Button size="sm" variant="ghost" onClick={() => setArmed(false)}>
          Cancel
        </Button>
      </span>
    );
  }
  return (
    <Button size="sm" variant="outline" disabled={disabled} onClick={() => setArmed(true)} data-action="drain" title="Cordon, then move every process off">
      <LogOut className="h-3.5 w-3.5" /> Drain
    </Button>
  );
}

/** Nodes with their schedulability: cordon, uncordon, drain; each node's latest drain. */
export function NodeActions({ servers, drains }: Props) {
  const schedulable = useSetSchedulable();
  const drain = useDrainServer();
  const [deadline, setDeadline] = useState('');
  const [error, setError] = useState<string | null>(null);
  const deadlineSeconds = parseDeadline(deadline);
  const sorted = [...servers].sort((a, b) => a.id.localeCompare(b.id, undefined, { numeric: true }));
  const latest = new Map<string, Drain>();
  for (const d of [...drains].sort((a, b) => a.startedAt.localeCompare(b.startedAt))) latest.set(d.serverId, d);
  const onError = (what: string) => (e: unknown) => setError(`${what}: ${errorMessage(e)}`);

  return (
    <Card data-testid="node-actions">
      <CardHeader>
        <div>
          <CardTitle>Nodes</CardTitle>
          <CardDescription>Cordon a node to keep new work off it; drain it to move everything off.</CardDescription>
        </div>
        <label className="flex items-center gap-2 text-xs text-slate-500 dark:text-slate-400">
          Drain deadline
          <Input
            className="h-7 w-24"
            placeholder="none"
            value={deadline}
            onChange={(e) => setDeadline(e.target.value)}
            aria-invalid={deadlineSeconds === null}
            data-testid="drain-deadline"
          />
        </label>
      </CardHeader>
      <CardContent className="space-y-3">
        {deadlineSeconds === null ? (
          <Alert tone="warning">The deadline must be 1 s to 24 h, e.g. 90s, 2m or 1h (or empty for none).</Alert>
        ) : null}
        {error ? (
          <Alert tone="error" className="flex items-start justify-between gap-3">
            <span>{error}</span>
            <button type="button" className="text-xs underline" onClick={() => setError(null)}>
              dismiss
            </button>
          </Alert>
        ) : null}
        <ul className="divide-y divide-slate-100 dark:divide-slate-800">
          {sorted.map((s) => {
            const running = latest.get(s.id)?.status === 'running';
            const cordoned = s.schedulable === false;
            return (
              <li key={s.id} className="flex flex-wrap items-center gap-2 py-2" data-testid="node-row" data-node={s.id}>
                <span className="min-w-24 font-medium">{s.id}</span>
                <Badge tone={s.status === 'online' ? 'green' : 'red'}>{s.status}</Badge>
                <Badge tone={running ? 'blue' : cordoned ? 'amber' : 'neutral'} data-testid="node-schedulable">
                  {running ? 'draining' : cordoned ? 'cordoned' : 'schedulable'}
                </Badge>
                <span className="text-xs text-slate-500 dark:text-slate-400">
                  {s.processCount} process{s.processCount === 1 ? '' : 'es'}
                </span>
                <span className="ml-auto flex gap-1">
                  {cordoned ? (
                    <Button
                      size="sm"
                      variant="outline"
                      disabled={running || schedulable.isPending}
                      onClick={() => schedulable.mutate({ id: s.id, schedulable: true }, { onError: onError(`Uncordon ${s.id}`) })}
                      data-action="uncordon"
                    >
                      <CheckCircle2 className="h-3.5 w-3.5" /> Uncordon
                    </Button>
                  ) : (
                    <Button
                      size="sm"
                      variant="outline"
                      disabled={schedulable.isPending}
                      onClick={() => schedulable.mutate({ id: s.id, schedulable: false }, { onError: onError(`Cordon ${s.id}`) })}
                      data-action="cordon"
                    >
                      <Ban className="h-3.5 w-3.5" /> Cordon
                    </Button>
                  )}
                  <DrainButton
                    disabled={running || s.status !== 'online' || deadlineSeconds === null || drain.isPending}
                    onDrain={() =>
                      drain.mutate(
                        { id: s.id, ...(deadlineSeconds !== undefined && deadlineSeconds !== null ? { deadlineSeconds } : {}) },
                        { onError: onError(`Drain ${s.id}`) },
                      )
                    }
                  />
                </span>
              </li>
            );
          })}
        </ul>
        {[...latest.values()].map((d) => (
          <DrainProgress key={d.id} drain={d} />
        ))}
      </CardContent>
    </Card>
  );
}
