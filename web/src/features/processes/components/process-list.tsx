import { useEffect, useState } from 'react';
import { ArrowRightLeft, History, Pause, Play, Plus, ScrollText, ShieldCheck, Square, TerminalSquare } from 'lucide-react';
import { Card, CardContent, CardDescription, CardHeader, CardTitle } from '@/components/ui/card';
import { Button } from '@/components/ui/button';
import { Alert } from '@/components/ui/alert';
import { Badge } from '@/components/ui/badge';
import { QueryError } from '@/components/query-error';
import { errorMessage } from '@/lib/api-client';
import { formatBytes, formatPercent, formatTime } from '@/lib/format';
import { cn } from '@/lib/utils';
import type { Process } from '@/types/api';
import { ProcessStatusBadge } from './status-badge';
import { joinArgv } from '../utils/argv';
import { sortProcesses } from '../utils/sort';
import { formatInterval } from '../utils/interval';
import { usePauseProcess } from '../api/pause-process';
import { useResumeProcess } from '../api/resume-process';
import { useStopProcess } from '../api/stop-process';

type Props = {
  processes: Process[] | undefined;
  loading: boolean;
  error: unknown;
  onNew: () => void;
  onMigrate: (p: Process) => void;
  onShowLogs: (p: Process) => void;
  /** Opens the process's checkpoints (no button without it). */
  onShowCheckpoints?: (p: Process) => void;
  selectedId?: string | null;
  /** Whether ended processes (exited, failed) are listed too. */
  showEnded?: boolean;
  onToggleEnded?: (show: boolean) => void;
};

/** The line under a status badge: how it ended, when an offline node last reported, which migration a copy waits for. */
function statusDetail(p: Process): string | null {
  if (p.status === 'failed' || p.status === 'exited') return p.exitSignal != null ? `signal ${p.exitSignal}` : p.exitCode != null ? `exit ${p.exitCode}` : null;
  if (p.status === 'unknown') return `node offline · last seen ${formatTime(p.lastSeen)}`;
  if (p.heldForMigration) return `held copy · ${p.heldForMigration}`;
  return null;
}

export function EmptyProcesses({ onNew }: { onNew: () => void }) {
  return (
    <div className="flex flex-col items-center gap-3 px-6 py-10 text-center" data-testid="processes-empty">
      <TerminalSquare className="h-10 w-10 text-slate-400" />
      <div className="text-base font-semibold">No processes yet</div>
      <p className="max-w-md text-sm text-slate-500 dark:text-slate-400">
        Click <strong>New process</strong> to start a program on a node, or run one from a shell:
      </p>
      <code className="max-w-full overflow-x-auto rounded-md bg-slate-100 px-3 py-2 text-left font-mono text-xs whitespace-nowrap dark:bg-slate-800">
        ferry run --node node0 -- sh -c &apos;i=0; while :; do i=$((i+1)); echo $i; sleep 1; done&apos;
      </code>
      <p className="max-w-md text-xs text-slate-500 dark:text-slate-400">Then move it to another node with Migrate.</p>
      <Button onClick={onNew}>
        <Plus className="h-4 w-4" /> New process
      </Button>
    </div>
  );
}

/** The Stop button asks once more before it stops anything. */
function StopButton({ onStop, disabled }: { onStop: () => void; disabled: boolean }) {
  const [armed, setArmed] = useState(false);
  useEffect(() => {
    if (!armed) return;
    const t = setTimeout(() => setArmed(false), 3000);
    return () => clearTimeout(t);
  }, [armed]);
  return (
    <Button
      size="sm"
      variant={armed ? 'destructive' : 'outline'}
      disabled={disabled}
      onClick={() => {
        if (armed) {
          setArmed(false);
          onStop();
        } else setArmed(true);
      }}
      title={armed ? 'Click again to stop' : 'Stop (SIGTERM, then SIGKILL)'}
      aria-label={armed ? 'Confirm stop' : 'Stop'}
      data-action="stop"
    >
      <Square className="h-3.5 w-3.5" />
      {armed ? 'Confirm' : null}
    </Button>
  );
}

/** A protected process: checkpointed every so often (and failed over from its checkpoints). */
export function ProtectedBadge({ seconds }: { seconds: number }) {
  return (
    <Badge tone="green" className="px-1.5 py-0 text-[10px]" data-testid="process-protected" title={`Protected: a checkpoint every ${formatInterval(seconds)}`}>
      <ShieldCheck className="h-3 w-3" aria-hidden />
      {formatInterval(seconds)}
    </Badge>
  );
}

export function ProcessList({ processes, loading, error, onNew, onMigrate, onShowLogs, onShowCheckpoints, selectedId, showEnded = false, onToggleEnded }: Props) {
  const pause = usePauseProcess();
  const resume = useResumeProcess();
  const stop = useStopProcess();
  const [actionError, setActionError] = useState<string | null>(null);
  const onError = (what: string) => (e: unknown) => setActionError(`${what}: ${errorMessage(e)}`);
  const busy = (id: string) =>
    (pause.isPending && pause.variables === id) || (resume.isPending && resume.variables === id) || (stop.isPending && stop.variables === id);

  const list = processes ? sortProcesses(processes) : [];
  return (
    <Card data-testid="processes">
      <CardHeader>
        <div>
          <CardTitle>Processes</CardTitle>
          <CardDescription>
            {showEnded ? 'Every workload, ended ones too, as its node last reported it.' : 'Live workloads, as their nodes last reported them.'}
          </CardDescription>
        </div>
        <div className="flex items-center gap-2">
          {onToggleEnded ? (
            <Button
              variant="outline"
              size="sm"
              aria-pressed={showEnded}
              onClick={() => onToggleEnded(!showEnded)}
              data-testid="toggle-ended"
              title="Exited and failed processes are kept for a while after they ended"
            >
              {showEnded ? 'Hide ended' : 'Show ended'}
            </Button>
          ) : null}
          <Button onClick={onNew} data-testid="new-process">
            <Plus className="h-4 w-4" /> New process
          </Button>
        </div>
      </CardHeader>
      {actionError ? (
        <div className="px-4 pt-3">
          <Alert tone="error" className="flex items-start justify-between gap-3">
            <span>{actionError}</span>
            <button className="cursor-pointer text-xs underline" onClick={() => setActionError(null)}>
              dismiss
            </button>
          </Alert>
        </div>
      ) : null}
      <CardContent className="p-0">
        <QueryError error={error} what="processes" />
        {loading && !processes ? (
          <p className="p-4 text-sm text-slate-500">Loading processes…</p>
        ) : list.length === 0 ? (
          processes ? <EmptyProcesses onNew={onNew} /> : null
        ) : (
          <div className="overflow-x-auto">
            <table className="w-full text-sm">
              <thead>
                <tr className="border-b border-slate-100 text-left text-xs tracking-wide text-slate-500 uppercase dark:border-slate-800 dark:text-slate-400">
                  <th className="px-4 py-2 font-medium">Name</th>
                  <th className="px-2 py-2 font-medium">Status</th>
                  <th className="px-2 py-2 font-medium">Node</th>
                  <th className="px-2 py-2 font-medium">Address</th>
                  <th className="px-2 py-2 text-right font-medium">CPU</th>
                  <th className="px-2 py-2 text-right font-medium">Memory</th>
                  <th className="px-4 py-2 text-right font-medium">Actions</th>
                </tr>
              </thead>
              <tbody>
                {list.map((p) => {
                  const live = p.status === 'running' || p.status === 'paused';
                  const disabled = busy(p.id);
                  return (
                    <tr
                      key={p.id}
                      data-testid="process-row"
                      data-process-id={p.id}
                      data-process-name={p.name}
                      data-node={p.serverId}
                      data-status={p.status}
                      className={cn(
                        'border-b border-slate-100 last:border-0 dark:border-slate-800',
                        selectedId === p.id && 'bg-teal-50/60 dark:bg-teal-950/30',
                        !live && p.status !== 'migrating' && 'text-slate-500 dark:text-slate-400',
                      )}
                    >
                      <td className="max-w-[16rem] px-4 py-2">
                        <div className="flex min-w-0 items-center gap-1.5">
                          <span className="truncate font-medium" title={p.name}>
                            {p.name}
                          </span>
                          {p.checkpointIntervalSeconds ? <ProtectedBadge seconds={p.checkpointIntervalSeconds} /> : null}
                        </div>
                        <div className="truncate font-mono text-[11px] text-slate-500 dark:text-slate-400" title={joinArgv(p.command)}>
                          {p.id} · {p.engine} · {joinArgv(p.command)}
                        </div>
                      </td>
                      <td className="px-2 py-2">
                        <ProcessStatusBadge status={p.status} />
                        {statusDetail(p) ? (
                          <div className="mt-0.5 text-[11px] text-slate-500" data-testid="process-status-detail" title={p.status === 'unknown' ? `last report ${p.lastSeen ?? 'never'}` : undefined}>
                            {statusDetail(p)}
                          </div>
                        ) : null}
                      </td>
                      <td className="px-2 py-2 font-mono text-xs" data-testid="process-node">
                        {p.serverId}
                      </td>
                      <td className="px-2 py-2 font-mono text-xs" data-testid="process-address" title={p.address ? 'its own address, which moves with it' : "the node's network"}>
                        {p.address ?? '—'}
                      </td>
                      <td className="px-2 py-2 text-right tabular-nums">{live || p.status === 'migrating' ? formatPercent(p.cpuPercent) : '—'}</td>
                      <td className="px-2 py-2 text-right tabular-nums">{live || p.status === 'migrating' ? formatBytes(p.memoryBytes) : '—'}</td>
                      <td className="px-4 py-2">
                        <div className="flex justify-end gap-1.5">
                          {p.status === 'paused' ? (
                            <Button size="sm" variant="outline" disabled={disabled} onClick={() => resume.mutate(p.id, { onError: onError(`Resume ${p.name}`) })} data-action="resume" title="Resume" aria-label="Resume">
                              <Play className="h-3.5 w-3.5" />
                            </Button>
                          ) : (
                            <Button
                              size="sm"
                              variant="outline"
                              disabled={disabled || p.status !== 'running'}
                              onClick={() => pause.mutate(p.id, { onError: onError(`Pause ${p.name}`) })}
                              data-action="pause"
                              title="Pause (SIGSTOP every task)"
                              aria-label="Pause"
                            >
                              <Pause className="h-3.5 w-3.5" />
                            </Button>
                          )}
                          <StopButton disabled={disabled || !live} onStop={() => stop.mutate(p.id, { onError: onError(`Stop ${p.name}`) })} />
                          <Button size="sm" variant="outline" disabled={!live} onClick={() => onMigrate(p)} data-action="migrate">
                            <ArrowRightLeft className="h-3.5 w-3.5" /> Migrate
                          </Button>
                          <Button size="sm" variant="ghost" onClick={() => onShowLogs(p)} title="The process's own output" aria-label="Output" data-action="logs">
                            <ScrollText className="h-3.5 w-3.5" />
                          </Button>
                          {onShowCheckpoints ? (
                            <Button size="sm" variant="ghost" onClick={() => onShowCheckpoints(p)} title="Checkpoints: take one, restore one" aria-label="Checkpoints" data-action="checkpoints">
                              <History className="h-3.5 w-3.5" />
                            </Button>
                          ) : null}
                        </div>
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        )}
      </CardContent>
    </Card>
  );
}
