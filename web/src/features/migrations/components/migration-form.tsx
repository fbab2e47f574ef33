import { useState, type FormEvent } from 'react';
import { ArrowRight } from 'lucide-react';
import { Label } from '@/components/ui/label';
import { Select } from '@/components/ui/select';
import { Input } from '@/components/ui/input';
import { Button } from '@/components/ui/button';
import { Alert } from '@/components/ui/alert';
import { errorMessage } from '@/lib/api-client';
import type { Migration, Process, Server } from '@/types/api';
import { MODE_CHOICES, modeHelp, type ModeChoice } from '../utils/modes';
import { useCreateMigration } from '../api/create-migration';
import { movable } from '../utils/movable';

type Props = {
  processes: Process[];
  servers: Server[];
  processId: string;
  onProcessChange: (id: string) => void;
  onStarted: (m: Migration) => void;
};

export function MigrationForm({ processes, servers, processId, onProcessChange, onStarted }: Props) {
  const create = useCreateMigration();
  const candidates = movable(processes);
  const process = processes.find((p) => p.id === processId);
  const source = process?.serverId ?? '';
  const targets = servers.filter((s) => s.id !== source);
  const [target, setTarget] = useState('');
  const [mode, setMode] = useState<ModeChoice>('stop-and-copy');

  // The target follows the process: keep the choice while it is valid, else the first online node.
  const validTarget = targets.some((s) => s.id === target && s.status === 'online');
  const effectiveTarget = validTarget ? target : (targets.find((s) => s.status === 'online')?.id ?? '');

  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (!process || !effectiveTarget) return;
    create.mutate(
      { processId: process.id, sourceServerId: source, targetServerId: effectiveTarget, mode },
      { onSuccess: (m) => onStarted(m) },
    );
  };

  const processListed = candidates.some((p) => p.id === processId);
  return (
    <form onSubmit={submit} className="space-y-3" data-testid="migration-form">
      <div>
        <Label htmlFor="mig-process">Process</Label>
        <Select id="mig-process" name="processId" value={processId} onChange={(e) => onProcessChange(e.target.value)}>
          <option value="">{candidates.length ? 'Choose a process…' : 'No running process'}</option>
          {!processListed && process ? (
            <option value={process.id} disabled>
              {process.name} ({process.status})
            </option>
          ) : null}
          {candidates.map((p) => (
            <option key={p.id} value={p.id}>
              {p.name} — {p.id} on {p.serverId}
            </option>
          ))}
        </Select>
      </div>
      <div className="grid grid-cols-[1fr_auto_1fr] items-end gap-2">
        <div>
          <Label htmlFor="mig-source">Source</Label>
          <Input id="mig-source" name="source" value={source} readOnly placeholder="the process's node" className="font-mono" />
        </div>
        <ArrowRight className="mb-2.5 h-4 w-4 text-slate-400" />
        <div>
          <Label htmlFor="mig-target">Target</Label>
          <Select id="mig-target" name="targetServerId" value={effectiveTarget} onChange={(e) => setTarget(e.target.value)} disabled={!process} className="font-mono">
            {targets.length === 0 || !process ? <option value="">—</option> : null}
            {process
              ? targets.map((s) => (
                  <option key={s.id} value={s.id} disabled={s.status !== 'online'}>
                    {s.id}
                    {s.status !== 'online' ? ' (offline)' : ''}
                  </option>
                ))
              : null}
          </Select>
        </div>
      </div>
      <div>
        <Label htmlFor="mig-mode">Mode</Label>
        <Select id="mig-mode" name="mode" value={mode} onChange={(e) => setMode(e.target.value as ModeChoice)}>
          {MODE_CHOICES.map((m) => (
            <option key={m.value} value={m.value}>
              {m.label}
            </option>
          ))}
        </Select>
        <p className="mt-1 text-[11px] text-slate-500 dark:text-slate-400">
          {modeHelp(mode)}
        </p>
      </div>
      {create.error ? (
        <Alert tone="error" data-testid="migration-form-error">
          {errorMessage(create.error)}
        </Alert>
      ) : null}
      <Button type="submit" className="w-full" disabled={!process || !effectiveTarget || create.isPending} data-testid="migration-submit">
        {create.isPending ? 'Starting…' : 'Migrate'}
      </Button>
    </form>
  );
}
