import type { ReactNode } from 'react';
import { Activity, ArrowRightLeft, Clock, Cpu, Server } from 'lucide-react';
import { Card } from '@/components/ui/card';
import { formatMs } from '@/lib/format';
import { QueryError } from '@/components/query-error';
import { useOverview } from '../api/get-overview';

function Stat({ label, value, sub, icon, testId }: { label: string; value: ReactNode; sub?: ReactNode; icon: ReactNode; testId: string }) {
  return (
    <Card className="flex items-start gap-3 p-4" data-testid={testId}>
      <div className="rounded-lg bg-teal-50 p-2 text-teal-700 dark:bg-teal-950 dark:text-teal-300">{icon}</div>
      <div className="min-w-0">
        <div className="text-xs font-medium uppercase tracking-wide text-slate-500 dark:text-slate-400">{label}</div>
        <div className="mt-0.5 text-2xl font-semibold tabular-nums" data-testid={`${testId}-value`}>
          {value}
        </div>
        {sub ? <div className="truncate text-xs text-slate-500 dark:text-slate-400">{sub}</div> : null}
      </div>
    </Card>
  );
}

export function OverviewCards() {
  const { data: o, error } = useOverview();
  const dash = '—';
  return (
    <div>
      <div className="grid grid-cols-2 gap-3 md:grid-cols-3 xl:grid-cols-5">
        <Stat
          testId="stat-processes"
          label="Processes"
          icon={<Cpu className="h-5 w-5" />}
          value={o ? o.totalProcesses : dash}
          sub={o ? `${o.runningProcesses} running` : undefined}
        />
        <Stat
          testId="stat-migrations"
          label="Active migrations"
          icon={<ArrowRightLeft className="h-5 w-5" />}
          value={o ? o.activeMigrations : dash}
          sub={o ? (o.activeMigrations ? 'in flight now' : 'none in flight') : undefined}
        />
        <Stat
          testId="stat-nodes"
          label="Server nodes"
          icon={<Server className="h-5 w-5" />}
          value={o ? `${o.onlineNodes}/${o.serverNodes}` : dash}
          sub={o ? (o.onlineNodes === o.serverNodes ? 'all online' : `${o.serverNodes - o.onlineNodes} offline`) : undefined}
        />
        <Stat
          testId="stat-success"
          label="Success rate"
          icon={<Activity className="h-5 w-5" />}
          value={o?.successRate != null ? `${(o.successRate * 100).toFixed(o.successRate === 1 ? 0 : 1)}%` : dash}
          sub={o ? (o.successRate == null ? 'no migration finished yet' : 'of finished migrations') : undefined}
        />
        <Stat
          testId="stat-downtime"
          label="Average downtime"
          icon={<Clock className="h-5 w-5" />}
          value={o?.averageDowntimeMs != null ? formatMs(o.averageDowntimeMs) : dash}
          sub={o ? (o.averageDowntimeMs == null ? 'no completed migration yet' : 'of completed migrations') : undefined}
        />
      </div>
      <QueryError error={error} what="the overview" />
    </div>
  );
}
