import { useCallback, useState } from 'react';
import { useConnection } from '@/lib/connection';
import type { Migration, Process } from '@/types/api';
import { isFinal } from '@/types/api';
import { OverviewCards } from '@/features/overview/components/overview-cards';
import { Topology } from '@/features/servers/components/topology';
import { useServers } from '@/features/servers/api/get-servers';
import { useProcesses } from '@/features/processes/api/get-processes';
import { ProcessList } from '@/features/processes/components/process-list';
import { NewProcessDialog } from '@/features/processes/components/new-process-dialog';
import { ProcessOutput } from '@/features/processes/components/process-output';
import { CheckpointsPanel } from '@/features/processes/components/checkpoints-panel';
import { useMigrations } from '@/features/migrations/api/get-migrations';
import { MigrationControl } from '@/features/migrations/components/migration-control';
import { useLogs } from '@/features/logs/api/get-logs';
import { SystemLogs } from '@/features/logs/components/system-logs';
import { useDrains } from '@/features/drains/api/get-drains';
import { NodeActions } from '@/features/drains/components/node-actions';

const EMPTY: never[] = [];

/** The newest migration still running, else the newest one. */
function latest(migrations: Migration[]): Migration | undefined {
  const sorted = [...migrations].sort((a, b) => b.startedAt.localeCompare(a.startedAt));
  return sorted.find((m) => !isFinal(m.status)) ?? sorted[0];
}

export function Dashboard() {
  const conn = useConnection();
  const servers = useServers();
  const [showEnded, setShowEnded] = useState(false);
  const processes = useProcesses(showEnded);
  const migrations = useMigrations();
  const drains = useDrains();
  const [newOpen, setNewOpen] = useState(false);
  const [migrateProcessId, setMigrateProcessId] = useState('');
  const [chosenMigrationId, setSelectedMigrationId] = useState<string | null>(null);
  const [outputId, setOutputId] = useState<string | null>(null);
  const [checkpointsId, setCheckpointsId] = useState<string | null>(null);

  const serverList = servers.data ?? EMPTY;
  const processList = processes.data ?? EMPTY;
  const migrationList = migrations.data ?? EMPTY;
  const selectedMigrationId = chosenMigrationId ?? latest(migrationList)?.id ?? null;
  const selectedMigration = migrationList.find((m) => m.id === selectedMigrationId);
  // The selected migration's phase events: what was logged before, and the live ones after.
  const migrationEvents = useLogs({ process: selectedMigration?.processId, limit: 500 }, !!selectedMigration);
  const outputProcess = processList.find((p) => p.id === outputId);
  const checkpointsProcess = processList.find((p) => p.id === checkpointsId);

  const onMigrate = useCallback((p: Process) => {
    setMigrateProcessId(p.id);
    document.getElementById('migration-control')?.scrollIntoView({ behavior: 'smooth', block: 'start' });
  }, []);

  return (
    <main className="mx-auto max-w-[1500px] space-y-5 px-4 py-5">
      <OverviewCards />
      <div id="topology" className="scroll-mt-4">
        <Topology servers={serverList} processes={processList} migrations={migrationList} onSelectMigration={setSelectedMigrationId} />
      </div>
      <div id="nodes" className="scroll-mt-4">
        <NodeActions servers={serverList} drains={drains.data ?? EMPTY} />
      </div>
      <div className="grid gap-5 xl:grid-cols-12">
        <div id="processes" className="scroll-mt-4 space-y-5 xl:col-span-7">
          <ProcessList
            processes={processes.data}
            loading={processes.isLoading}
            error={processes.error}
            onNew={() => setNewOpen(true)}
            onMigrate={onMigrate}
            onShowLogs={(p) => setOutputId(p.id)}
            onShowCheckpoints={(p) => setCheckpointsId(p.id)}
            selectedId={migrateProcessId}
            showEnded={showEnded}
            onToggleEnded={setShowEnded}
          />
          {outputProcess ? <ProcessOutput key={outputProcess.id} process={outputProcess} onClose={() => setOutputId(null)} /> : null}
          {checkpointsProcess ? (
            <CheckpointsPanel
              key={checkpointsProcess.id}
              process={checkpointsProcess}
              servers={serverList}
              onClose={() => setCheckpointsId(null)}
              onRestored={(m) => setSelectedMigrationId(m.id)}
            />
          ) : null}
        </div>
        <div className="scroll-mt-4 xl:col-span-5">
          <MigrationControl
            processes={processList}
            servers={serverList}
            migrations={migrationList}
            migrationsError={migrations.error}
            processId={migrateProcessId}
            onProcessChange={setMigrateProcessId}
            selectedMigrationId={selectedMigrationId}
            onSelectMigration={setSelectedMigrationId}
            events={migrationEvents.data ?? EMPTY}
          />
        </div>
      </div>
      <div id="logs" className="scroll-mt-4">
        <SystemLogs processes={processList} live={conn.streamSeen && !conn.streamDown} />
      </div>
      <NewProcessDialog
        open={newOpen}
        onClose={() => setNewOpen(false)}
        servers={serverList}
        onCreated={(p) => {
          if (!migrateProcessId) setMigrateProcessId(p.id);
        }}
      />
    </main>
  );
}
