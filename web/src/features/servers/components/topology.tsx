import { Network } from 'lucide-react';
import type { Migration, Process, Server } from '@/types/api';
import { isFinal } from '@/types/api';
import { Card, CardContent, CardDescription, CardHeader, CardTitle } from '@/components/ui/card';
import { formatBytes, formatPercent } from '@/lib/format';
import { cn } from '@/lib/utils';
import { CARD_W, HEADER_H, MAX_ROWS, PAD_TOP, PAD_TOP_QUIET, ROW_H, edgePath, layoutBoxes, truncate, type Box } from '../utils/layout';

type Props = {
  servers: Server[];
  processes: Process[];
  migrations: Migration[];
  onSelectMigration?: (id: string) => void;
};

const statusFill: Record<string, string> = {
  running: 'fill-emerald-500',
  paused: 'fill-amber-500',
  migrating: 'fill-sky-500',
  held: 'fill-sky-300',
  unknown: 'fill-amber-300',
  exited: 'fill-slate-400',
  failed: 'fill-red-500',
};

function Meter({ x, y, w, frac, label, value }: { x: number; y: number; w: number; frac: number; label: string; value: string }) {
  const f = Math.max(0, Math.min(1, Number.isFinite(frac) ? frac : 0));
  return (
    <g>
      <text x={x} y={y} className="fill-slate-500 text-[10px] font-medium uppercase dark:fill-slate-400">
        {label}
      </text>
      <text x={x + w} y={y} textAnchor="end" className="fill-slate-700 text-[11px] tabular-nums dark:fill-slate-200">
        {value}
      </text>
      <rect x={x} y={y + 5} width={w} height={5} rx={2.5} className="fill-slate-200 dark:fill-slate-700" />
      <rect
        x={x}
        y={y + 5}
        width={Math.max(f > 0 ? 2 : 0, w * f)}
        height={5}
        rx={2.5}
        className={f > 0.85 ? 'fill-red-500' : f > 0.6 ? 'fill-amber-500' : 'fill-teal-500'}
      />
    </g>
  );
}

function NodeBox({ box, server, procs, movingIds }: { box: Box; server: Server; procs: Process[]; movingIds: Set<string> }) {
  const online = server.status === 'online';
  const memFrac = server.memoryTotalBytes ? server.memoryUsedBytes / server.memoryTotalBytes : 0;
  const shown = procs.slice(0, MAX_ROWS);
  const inner = CARD_W - 28;
  return (
    <g
      transform={`translate(${box.x} ${box.y})`}
      data-testid={`topology-node-${server.id}`}
      data-status={server.status}
      data-schedulable={server.schedulable === false ? 'false' : 'true'}
    >
      <rect
        width={box.w}
        height={box.h}
        rx={12}
        className={cn(
          'stroke-[1.5]',
          online ? 'fill-white stroke-slate-300 dark:fill-slate-900 dark:stroke-slate-600' : 'fill-slate-100 stroke-red-300 dark:fill-slate-900/60 dark:stroke-red-800',
        )}
        strokeDasharray={online ? undefined : '6 4'}
      />
      <circle cx={20} cy={24} r={5} className={online ? 'fill-emerald-500' : 'fill-red-500'} />
      <text x={32} y={29} className="fill-slate-900 text-[15px] font-semibold dark:fill-slate-50">
        {truncate(server.id, 18)}
      </text>
      <text x={box.w - 14} y={29} textAnchor="end" className={cn('text-[11px] font-medium', online ? 'fill-emerald-700 dark:fill-emerald-400' : 'fill-red-600 dark:fill-red-400')}>
        {server.schedulable === false ? `${server.status} · cordoned` : server.status}
      </text>
      <text x={14} y={46} className="fill-slate-500 text-[10.5px] dark:fill-slate-400">
        {truncate(`${server.name !== server.id ? `${server.name} · ` : ''}${server.address}`, 44)}
      </text>
      <Meter x={14} y={64} w={(inner - 14) / 2} frac={server.cpuPercent / 100} label="CPU" value={formatPercent(server.cpuPercent)} />
      <Meter
        x={14 + (inner - 14) / 2 + 14}
        y={64}
        w={(inner - 14) / 2}
        frac={memFrac}
        label="Mem"
        value={`${formatBytes(server.memoryUsedBytes)} / ${formatBytes(server.memoryTotalBytes)}`}
      />
      <line x1={0} x2={box.w} y1={HEADER_H - 8} y2={HEADER_H - 8} className="stroke-slate-100 dark:stroke-slate-800" />
      <text x={box.w - 14} y={HEADER_H + 4} textAnchor="end" className="fill-slate-400 text-[10px] dark:fill-slate-500">
        {server.processCount} process{server.processCount === 1 ? '' : 'es'}
      </text>
      {procs.length === 0 ? (
        <text x={14} y={HEADER_H + 22} className="fill-slate-400 text-[11.5px] italic dark:fill-slate-500">
          no workloads
        </text>
      ) : null}
      {shown.map((p, i) => {
        const y = HEADER_H + 10 + i * ROW_H;
        const moving = movingIds.has(p.id) || p.status === 'migrating';
        return (
          <g key={p.id} transform={`translate(10 ${y})`} data-testid={`topology-process-${p.id}`}>
            <title>{`${p.name} (${p.id}) — ${p.status}`}</title>
            <rect
              width={box.w - 20}
              height={ROW_H - 5}
              rx={6}
              className={cn(
                moving ? 'fill-sky-50 stroke-sky-400 dark:fill-sky-950 dark:stroke-sky-600' : 'fill-slate-50 stroke-slate-200 dark:fill-slate-800 dark:stroke-slate-700',
              )}
              strokeDasharray={moving ? '4 3' : undefined}
            />
            <circle cx={12} cy={(ROW_H - 5) / 2} r={4} className={statusFill[p.status] ?? 'fill-slate-400'} />
            <text x={22} y={16} className="fill-slate-800 text-[12px] font-medium dark:fill-slate-100">
              {truncate(p.name, 20)}
            </text>
            <text x={box.w - 30} y={16} textAnchor="end" className="fill-slate-500 text-[10.5px] tabular-nums dark:fill-slate-400">
              {moving ? 'migrating' : `${formatPercent(p.cpuPercent)} · ${formatBytes(p.memoryBytes)}`}
            </text>
          </g>
        );
      })}
      {procs.length > MAX_ROWS ? (
        <text x={14} y={HEADER_H + 10 + MAX_ROWS * ROW_H + 15} className="fill-slate-500 text-[11px] dark:fill-slate-400">
          + {procs.length - MAX_ROWS} more
        </text>
      ) : null}
    </g>
  );
}

/** Nodes as boxes with their workloads; each migration in flight is an arrow source → target. */
export function Topology({ servers, processes, migrations, onSelectMigration }: Props) {
  const active = processes.filter((p) => p.status !== 'exited' && p.status !== 'failed');
  const byNode = new Map<string, Process[]>();
  for (const s of servers) byNode.set(s.id, []);
  for (const p of active) byNode.get(p.serverId)?.push(p);
  const inFlight = migrations.filter((m) => !isFinal(m.status));
  const movingIds = new Set(inFlight.map((m) => m.processId));

  const sorted = [...servers].sort((a, b) => a.id.localeCompare(b.id, undefined, { numeric: true }));
  const { boxes, width, height } = layoutBoxes(
    sorted.map((s) => ({ id: s.id, rows: byNode.get(s.id)?.length ?? 0 })),
    3,
    inFlight.length ? PAD_TOP : PAD_TOP_QUIET,
  );
  const boxOf = new Map(boxes.map((b) => [b.id, b]));
  const names = new Map(processes.map((p) => [p.id, p.name]));
  const lanes = new Map<string, number>();

  return (
    <Card data-testid="topology">
      <CardHeader>
        <div>
          <CardTitle>Server topology</CardTitle>
          <CardDescription>Every node with its load and workloads; migrations in flight are drawn as arrows.</CardDescription>
        </div>
        <div className="flex items-center gap-3 text-xs text-slate-500 dark:text-slate-400">
          <span className="flex items-center gap-1"><span className="h-2 w-2 rounded-full bg-emerald-500" />running</span>
          <span className="flex items-center gap-1"><span className="h-2 w-2 rounded-full bg-amber-500" />paused</span>
          <span className="flex items-center gap-1"><span className="h-2 w-2 rounded-full bg-sky-500" />migrating</span>
        </div>
      </CardHeader>
      <CardContent className="overflow-x-auto">
        {servers.length === 0 ? (
          <div className="flex items-center gap-3 py-8 text-sm text-slate-500 dark:text-slate-400">
            <Network className="h-6 w-6" />
            No nodes have registered yet. Start a cluster with <code className="rounded bg-slate-100 px-1 dark:bg-slate-800">ferry up</code>, or
            start agents with <code className="rounded bg-slate-100 px-1 dark:bg-slate-800">ferry agent --coordinator URL</code>.
          </div>
        ) : (
          <svg
            viewBox={`0 0 ${width} ${height}`}
            width="100%"
            style={{ maxWidth: width * 1.25, minWidth: Math.min(width, 640) }}
            className="mx-auto block font-sans"
            role="img"
            aria-label={`Topology of ${servers.length} nodes`}
          >
            <defs>
              <marker id="ferry-arrow" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
                <path d="M 0 0 L 10 5 L 0 10 z" className="fill-sky-500" />
              </marker>
            </defs>
            {sorted.map((s) => {
              const box = boxOf.get(s.id);
              return box ? <NodeBox key={s.id} box={box} server={s} procs={byNode.get(s.id) ?? []} movingIds={movingIds} /> : null;
            })}
            {inFlight.map((m) => {
              const a = boxOf.get(m.sourceServerId);
              const b = boxOf.get(m.targetServerId);
              if (!a || !b) return null;
              const pair = `${a.id}>${b.id}`;
              const lane = lanes.get(pair) ?? 0;
              lanes.set(pair, lane + 1);
              const { d, labelX, labelY } = edgePath(a, b, lane);
              const label = `${truncate(names.get(m.processId) ?? m.processId, 16)} · ${m.status.replace(/_/g, '-')}`;
              return (
                <g
                  key={m.id}
                  data-testid={`topology-migration-${m.id}`}
                  className={onSelectMigration ? 'cursor-pointer' : undefined}
                  onClick={() => onSelectMigration?.(m.id)}
                >
                  <title>{`Migration ${m.id}: ${m.processId} ${m.sourceServerId} → ${m.targetServerId} (${m.status})`}</title>
                  <path d={d} fill="none" strokeWidth={2.5} className="ferry-flow stroke-sky-500" markerEnd="url(#ferry-arrow)" />
                  <rect x={labelX - 80} y={labelY - 12} width={160} height={20} rx={10} className="fill-sky-50 stroke-sky-300 dark:fill-sky-950 dark:stroke-sky-700" />
                  <text x={labelX} y={labelY + 2} textAnchor="middle" className="fill-sky-800 text-[11px] font-medium dark:fill-sky-200">
                    {label}
                  </text>
                </g>
              );
            })}
          </svg>
        )}
      </CardContent>
    </Card>
  );
}
