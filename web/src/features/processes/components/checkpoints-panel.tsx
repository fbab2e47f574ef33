import { useState } from 'react';
import { Camera, Cloud, RotateCcw, X } from 'lucide-react';
import { Card, CardContent, CardDescription, CardHeader, CardTitle } from '@/components/ui/card';
import { Button } from '@/components/ui/button';
import { Badge } from '@/components/ui/badge';
import { Alert } from '@/components/ui/alert';
import { Label } from '@/components/ui/label';
import { Select } from '@/components/ui/select';
import { QueryError } from '@/components/query-error';
import { errorMessage } from '@/lib/api-client';
import { formatBytes, formatMs, formatTime } from '@/lib/format';
import type { Checkpoint, Migration, Process, Server } from '@/types/api';
import { useCheckpoints } from '../api/get-checkpoints';
import { useTakeCheckpoint } from '../api/take-checkpoint';
import { useRestoreProcess } from '../api/restore-process';
import { formatInterval } from '../utils/interval';

type Props = {
  process: Process;
  servers: Server[];
  onClose: () => void;
  /** The restore's migration (mode "restore"), once the API accepted it. */
  onRestored?: (m: Migration) => void;
};

/** Where a checkpoint is kept: nodes, and the object store ("s3") set apart. */
export function HolderBadges({ holders }: { holders: string[] }) {
  return (
    <span className="flex flex-wrap gap-1">
      {holders.map((h) =>
        h === 's3' ? (
          <Badge key={h} tone="blue" className="px-1.5 py-0 text-[10px]" data-testid="checkpoint-holder" data-holder={h} title="Kept in the object store">
            <Cloud className="h-3 w-3" aria-hidden />
            s3
          </Badge>
        ) : (
          <Badge key={h} className="px-1.5 py-0 font-mono text-[10px]" data-testid="checkpoint-holder" data-holder={h} title={`Kept on ${h}`}>
            {h}
          </Badge>
        ),
      )}
    </span>
  );
}

/** Asks once more before a restore, with where to restore it. */
function RestoreConfirm({
  process,
  checkpoint,
  servers,
  pending,
  onConfirm,
  onCancel,
}: {
  process: Process;
  checkpoint: Checkpoint;
  servers: Server[];
  pending: boolean;
  onConfirm: (serverId: string) => void;
  onCancel: () => void;
}) {
  const [serverId, setServerId] = useState('');
  return (
    <Alert tone="warning" className="space-y-2" data-testid="restore-confirm">
      <p className="font-medium">
        Restore {process.name} to the checkpoint of {formatTime(checkpoint.takenAt)}? What ran since is lost.
      </p>
      <div className="flex flex-wrap items-end gap-2">
        <div>
          <Label htmlFor="restore-node">Target node</Label>
          <Select id="restore-node" value={serverId} onChange={(e) => setServerId(e.target.value)} className="h-8 w-56 text-xs">
            <option value="">the coordinator chooses</option>
            {servers.map((s) => (
              <option key={s.id} value={s.id} disabled={s.status !== 'online'}>
                {s.id}
                {s.status !== 'online' ? ' (offline)' : ''}
              </option>
            ))}
          </Select>
        </div>
        <Button size="sm" variant="destructive" disabled={pending} onClick={() => onConfirm(serverId)} data-action="confirm-restore">
          {pending ? 'Restoring…' : 'Confirm restore'}
        </Button>
        <Button size="sm" variant="ghost" onClick={onCancel}>
          Cancel
        </Button>
      </div>
    </Alert>
  );
}

/** A process's checkpoints (GET /api/processes/{id}/checkpoints): take one now, restore one. */
export function CheckpointsPanel({ process, servers, onClose, onRestored }: Props) {
  const { data, error, isLoading } = useCheckpoints(process.id);
  const take = useTakeCheckpoint();
  const restore = useRestoreProcess();
  const [armedId, setArmedId] = useState<string | null>(null);
  const [restored, setRestored] = useState<Migration | null>(null);
  const list = data ?? [];
  const armed = list.find((c) => c.id === armedId) ?? null;
  const live = process.status === 'running' || process.status === 'paused';
  const interval = process.checkpointIntervalSeconds;

  const onRestore = (c: Checkpoint, serverId: string) =>
    restore.mutate(
      { id: process.id, checkpointId: c.id, ...(serverId ? { serverId } : {}) },
      {
        onSuccess: (m) => {
          setArmedId(null);
          setRestored(m);
          onRestored?.(m);
        },
      },
    );

  return (
    <Card data-testid="checkpoints-panel">
      <CardHeader>
        <div className="min-w-0">
          <CardTitle>
            Checkpoints of <span className="font-mono">{process.name}</span>
          </CardTitle>
          <CardDescription>
            {process.id} on {process.serverId} ·{' '}
            <span data-testid="checkpoints-protection">
              {interval ? `protected, a checkpoint every ${formatInterval(interval)}` : 'unprotected: only checkpoints taken by hand'}
            </span>
          </CardDescription>
        </div>
        <div className="flex items-center gap-2">
          <Button
            size="sm"
            variant="outline"
            disabled={!live || take.isPending}
            onClick={() => take.mutate(process.id)}
            title={live ? 'Freeze it briefly and take a checkpoint' : 'Only a running or paused process can be checkpointed'}
            data-action="checkpoint-now"
          >
            <Camera className="h-3.5 w-3.5" /> {take.isPending ? 'Taking…' : 'Checkpoint now'}
          </Button>
          <Button size="icon" variant="ghost" aria-label="Close checkpoints" onClick={onClose}>
            <X className="h-4 w-4" />
          </Button>
        </div>
      </CardHeader>
      <CardContent className="space-y-3">
        <QueryError error={error} what="the checkpoints" />
        {take.error ? (
          <Alert tone="error" data-testid="checkpoint-error">
            Checkpoint {process.name}: {errorMessage(take.error)}
          </Alert>
        ) : null}
        {restore.error ? (
          <Alert tone="error" data-testid="restore-error">
            Restore {process.name}: {errorMessage(restore.error)}
          </Alert>
        ) : null}
        {restored && !restore.error ? (
          <Alert tone="info" data-testid="restore-started">
            Restoring {process.name}: migration <span className="font-mono">{restored.id}</span> to {restored.targetServerId}.
          </Alert>
        ) : null}
        {armed ? (
          <RestoreConfirm
            key={armed.id}
            process={process}
            checkpoint={armed}
            servers={servers}
            pending={restore.isPending}
            onConfirm={(serverId) => onRestore(armed, serverId)}
            onCancel={() => setArmedId(null)}
          />
        ) : null}
        {isLoading ? (
          <p className="text-sm text-slate-500">Loading checkpoints…</p>
        ) : list.length === 0 ? (
          data ? (
            <p className="text-sm text-slate-500 dark:text-slate-400" data-testid="checkpoints-empty">
              No checkpoints yet.{interval ? ` The first is taken within ${formatInterval(interval)}.` : ' Take one with Checkpoint now.'}
            </p>
          ) : null
        ) : (
          <div className="overflow-x-auto">
            <table className="w-full text-sm">
              <thead>
                <tr className="border-b border-slate-100 text-left text-xs tracking-wide text-slate-500 uppercase dark:border-slate-800 dark:text-slate-400">
                  <th className="py-2 pr-2 font-medium">Taken</th>
                  <th className="px-2 py-2 text-right font-medium">Size raw → stored</th>
                  <th className="px-2 py-2 text-right font-medium">Freeze</th>
                  <th className="px-2 py-2 font-medium">Held by</th>
                  <th className="py-2 pl-2 text-right font-medium" />
                </tr>
              </thead>
              <tbody>
                {list.map((c) => (
                  <tr key={c.id} className="border-b border-slate-100 last:border-0 dark:border-slate-800" data-testid="checkpoint-row" data-checkpoint-id={c.id}>
                    <td className="py-1.5 pr-2 whitespace-nowrap" title={`${c.id} · ${c.takenAt} on ${c.node}`}>
                      <span className="tabular-nums">{formatTime(c.takenAt)}</span>{' '}
                      <span className="font-mono text-[11px] text-slate-500 dark:text-slate-400">
                        #{c.seq} · {c.node}
                      </span>
                    </td>
                    <td className="px-2 py-1.5 text-right whitespace-nowrap tabular-nums" data-testid="checkpoint-size">
                      {formatBytes(c.rawBytes)} → {formatBytes(c.bytes)}
                    </td>
                    <td className="px-2 py-1.5 text-right whitespace-nowrap tabular-nums">{formatMs(c.freezeMs)}</td>
                    <td className="px-2 py-1.5">
                      <HolderBadges holders={c.holders} />
                    </td>
                    <td className="py-1.5 pl-2 text-right">
                      <Button
                        size="sm"
                        variant={armedId === c.id ? 'secondary' : 'outline'}
                        onClick={() => {
                          restore.reset();
                          setArmedId(c.id);
                        }}
                        data-action="restore"
                        title="Restore the process to this checkpoint"
                      >
                        <RotateCcw className="h-3.5 w-3.5" /> Restore
                      </Button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </CardContent>
    </Card>
  );
}
