import { Card, CardContent, CardDescription, CardHeader, CardTitle } from '@/components/ui/card';
import { QueryError } from '@/components/query-error';
import type { FerryEvent, Migration, Process, Server } from '@/types/api';
import { MigrationForm } from './migration-form';
import { MigrationDetail } from './migration-detail';
import { MigrationHistory } from './migration-history';

type Props = {
  processes: Process[];
  servers: Server[];
  migrations: Migration[];
  migrationsError: unknown;
  processId: string;
  onProcessChange: (id: string) => void;
  selectedMigrationId: string | null;
  onSelectMigration: (id: string) => void;
  /** Events of the selected migration's process. */
  events: FerryEvent[];
};

export function MigrationControl(props: Props) {
  const { processes, servers, migrations, processId, onProcessChange, selectedMigrationId, onSelectMigration, events } = props;
  const names = new Map(processes.map((p) => [p.id, p.name]));
  const selected = migrations.find((m) => m.id === selectedMigrationId) ?? null;
  return (
    <Card data-testid="migration-control" id="migration-control">
      <CardHeader>
        <div>
          <CardTitle>Migration control</CardTitle>
          <CardDescription>Move a running process to another node; its phases appear here live.</CardDescription>
        </div>
      </CardHeader>
      <CardContent className="space-y-5">
        <MigrationForm
          processes={processes}
          servers={servers}
          processId={processId}
          onProcessChange={onProcessChange}
          onStarted={(m) => onSelectMigration(m.id)}
        />
        {selected ? (
          <div className="rounded-lg border border-slate-200 p-3 dark:border-slate-700">
            <MigrationDetail migration={selected} events={events} processName={names.get(selected.processId)} />
          </div>
        ) : null}
        <div>
          <h3 className="mb-1 text-xs font-semibold tracking-wide text-slate-500 uppercase dark:text-slate-400">Recent migrations</h3>
          <QueryError error={props.migrationsError} what="migrations" />
          <MigrationHistory migrations={migrations} names={names} selectedId={selectedMigrationId} onSelect={onSelectMigration} />
        </div>
      </CardContent>
    </Card>
  );
}
