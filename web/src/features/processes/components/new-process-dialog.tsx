import { useMemo, useState, type FormEvent } from 'react';
import { Dialog } from '@/components/ui/dialog';
import { Input } from '@/components/ui/input';
import { Label } from '@/components/ui/label';
import { Select } from '@/components/ui/select';
import { Button } from '@/components/ui/button';
import { Alert } from '@/components/ui/alert';
import { errorMessage } from '@/lib/api-client';
import type { Engine, Network, Process, Server } from '@/types/api';
import { splitArgv } from '../utils/argv';
import { parseInterval } from '../utils/interval';
import { useCreateProcess } from '../api/create-process';

type Props = {
  open: boolean;
  onClose: () => void;
  servers: Server[];
  onCreated?: (p: Process) => void;
};

export const EXAMPLE_COMMAND = `sh -c 'i=0; while :; do i=$((i+1)); echo $i; sleep 1; done'`;

export function NewProcessDialog({ open, onClose, servers, onCreated }: Props) {
  return (
    <Dialog open={open} onClose={onClose} title="New process" description="Start a program on a node. The command is split into arguments the way a shell would.">
      {/* Remounted on every open, so the form starts empty. */}
      {open ? <NewProcessForm servers={servers} onClose={onClose} onCreated={onCreated} /> : null}
    </Dialog>
  );
}

function NewProcessForm({ servers, onClose, onCreated }: Omit<Props, 'open'>) {
  const online = servers.filter((s) => s.status === 'online');
  const [name, setName] = useState('');
  const [command, setCommand] = useState('');
  const [serverId, setServerId] = useState(online[0]?.id ?? servers[0]?.id ?? '');
  const [engine, setEngine] = useState<Engine>('criu');
  // 'default': the coordinator's --default-network decides.
  const [network, setNetwork] = useState<Network | 'default'>('default');
  const [checkpointEvery, setCheckpointEvery] = useState('');
  const [touched, setTouched] = useState(false);
  const create = useCreateProcess();

  const split = useMemo(() => splitArgv(command), [command]);
  // Checked as typed (as the API would): undefined is none, null is refused.
  const interval = parseInterval(checkpointEvery);
  const intervalError =
    interval === null ? 'Checkpoint every 5 s to 24 h: a number of seconds, or e.g. 30s, 2m, 1h (empty: unprotected).' : null;
  const localError = !touched
    ? null
    : !split.ok
      ? split.error
      : split.argv.length === 0
        ? 'Give a command, e.g. sleep 600.'
        : !serverId
          ? 'Choose a node.'
          : null;

  const submit = (e: FormEvent) => {
    e.preventDefault();
    setTouched(true);
    if (!split.ok || split.argv.length === 0 || !serverId || interval === null) return;
    create.mutate(
      {
        name: name.trim() || split.argv[0].split('/').pop() || split.argv[0],
        command: split.argv,
        serverId,
        engine,
        ...(network === 'default' ? {} : { network }),
        ...(interval !== undefined ? { checkpointIntervalSeconds: interval } : {}),
      },
      {
        onSuccess: (p) => {
          onCreated?.(p);
          onClose();
        },
      },
    );
  };

  return (
    <form onSubmit={submit} className="space-y-4" data-testid="new-process-form" noValidate>
      <div>
        <Label htmlFor="np-name">Name</Label>
        <Input id="np-name" name="name" value={name} onChange={(e) => setName(e.target.value)} placeholder="counter" autoComplete="off" />
      </div>
      <div>
        <Label htmlFor="np-command">Command</Label>
        <Input
          id="np-command"
          name="command"
          value={command}
          onChange={(e) => setCommand(e.target.value)}
          placeholder={EXAMPLE_COMMAND}
          className="font-mono text-xs"
          autoComplete="off"
          spellCheck={false}
        />
        <div className="mt-2" data-testid="argv-preview">
          <div className="mb-1 text-[11px] font-medium uppercase tracking-wide text-slate-500 dark:text-slate-400">
            argv ({split.argv.length})
          </div>
          {split.argv.length === 0 ? (
            <span className="text-xs text-slate-400">
              e.g. <button type="button" className="cursor-pointer font-mono underline decoration-dotted" onClick={() => setCommand(EXAMPLE_COMMAND)}>{EXAMPLE_COMMAND}</button>
            </span>
          ) : (
            <ol className="flex flex-wrap gap-1.5">
              {split.argv.map((a, i) => (
                <li key={i} className="flex max-w-full items-baseline gap-1 rounded-md border border-slate-200 bg-slate-50 px-1.5 py-0.5 font-mono text-xs dark:border-slate-700 dark:bg-slate-800">
                  <span className="text-[10px] text-slate-400">{i}</span>
                  <span className="break-all whitespace-pre-wrap">{a === '' ? '""' : a}</span>
                </li>
              ))}
            </ol>
          )}
          {!split.ok ? <p className="mt-1 text-xs text-amber-700 dark:text-amber-400">{split.error}</p> : null}
        </div>
      </div>
      <div className="grid grid-cols-2 gap-3">
        <div>
          <Label htmlFor="np-node">Node</Label>
          <Select id="np-node" name="serverId" value={serverId} onChange={(e) => setServerId(e.target.value)}>
            {servers.length === 0 ? <option value="">no nodes</option> : null}
            {servers.map((s) => (
              <option key={s.id} value={s.id} disabled={s.status !== 'online'}>
                {s.id}
                {s.status !== 'online' ? ' (offline)' : ''}
              </option>
            ))}
          </Select>
        </div>
        <div>
          <Label htmlFor="np-engine">Engine</Label>
          <Select id="np-engine" name="engine" value={engine} onChange={(e) => setEngine(e.target.value as Engine)}>
            <option value="criu">criu</option>
            <option value="cooperative">cooperative</option>
          </Select>
        </div>
        <div className="col-span-2">
          <Label htmlFor="np-network">Network</Label>
          <Select id="np-network" name="network" value={network} onChange={(e) => setNetwork(e.target.value as Network | 'default')}>
            <option value="default">cluster default</option>
            <option value="node">node&apos;s network</option>
            <option value="own">own address (moves with it)</option>
          </Select>
        </div>
        <div className="col-span-2">
          <Label htmlFor="np-checkpoint">Checkpoint every</Label>
          <Input
            id="np-checkpoint"
            name="checkpointInterval"
            value={checkpointEvery}
            onChange={(e) => setCheckpointEvery(e.target.value)}
            placeholder="off, e.g. 30s or 2m"
            aria-invalid={interval === null}
            aria-describedby="np-checkpoint-help"
            autoComplete="off"
          />
          {intervalError ? (
            <p id="np-checkpoint-help" className="mt-1 text-xs text-amber-700 dark:text-amber-400" data-testid="checkpoint-interval-error">
              {intervalError}
            </p>
          ) : (
            <p id="np-checkpoint-help" className="mt-1 text-[11px] text-slate-500 dark:text-slate-400">
              Protects it: checkpoints kept on other nodes, restored elsewhere if its node is lost.
            </p>
          )}
        </div>
      </div>
      {localError ? <Alert tone="warning">{localError}</Alert> : null}
      {create.error ? (
        <Alert tone="error" data-testid="new-process-error">
          {errorMessage(create.error)}
        </Alert>
      ) : null}
      <div className="flex justify-end gap-2 pt-1">
        <Button variant="outline" onClick={onClose}>
          Cancel
        </Button>
        <Button type="submit" disabled={create.isPending} data-testid="new-process-submit">
          {create.isPending ? 'Starting…' : 'Start process'}
        </Button>
      </div>
    </form>
  );
}
