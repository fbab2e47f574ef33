import { useMemo, useState } from 'react';
import { Card, CardContent, CardDescription, CardHeader, CardTitle } from '@/components/ui/card';
import { Select } from '@/components/ui/select';
import { Input } from '@/components/ui/input';
import { Label } from '@/components/ui/label';
import { Badge } from '@/components/ui/badge';
import { QueryError } from '@/components/query-error';
import { formatTime } from '@/lib/format';
import { cn } from '@/lib/utils';
import type { Process } from '@/types/api';
import { useLogs } from '../api/get-logs';
import { searchEvents } from '../utils/filter';

const levelTone = { info: 'blue', warn: 'amber', error: 'red' } as const;

type Props = {
  processes: Process[];
  /** Whether the event stream is open (new entries arrive live). */
  live: boolean;
};

/** The system and migration log: live from the event stream, filtered by process and level. */
export function SystemLogs({ processes, live }: Props) {
  const [process, setProcess] = useState('');
  const [level, setLevel] = useState('');
  const [text, setText] = useState('');
  const { data, error, isLoading } = useLogs({ process, level, limit: 300 });
  const shown = useMemo(() => [...searchEvents(data ?? [], text)].reverse(), [data, text]);

  return (
    <Card data-testid="system-logs">
      <CardHeader>
        <div>
          <CardTitle className="flex items-center gap-2">
            System logs
            <span
              className={cn('inline-flex items-center gap-1 text-xs font-normal', live ? 'text-emerald-600 dark:text-emerald-400' : 'text-slate-400')}
              title={live ? 'New entries arrive as they happen' : 'The event stream is not connected'}
            >
              <span className={cn('h-2 w-2 rounded-full', live ? 'animate-pulse bg-emerald-500' : 'bg-slate-400')} />
              {live ? 'live' : 'paused'}
            </span>
          </CardTitle>
          <CardDescription>Node, process, migration and failover events, newest first.</CardDescription>
        </div>
        <div className="flex flex-wrap items-end gap-2">
          <div>
            <Label htmlFor="log-process">Process</Label>
            <Select id="log-process" value={process} onChange={(e) => setProcess(e.target.value)} className="h-8 w-48 text-xs">
              <option value="">all processes</option>
              {processes.map((p) => (
                <option key={p.id} value={p.id}>
                  {p.name} ({p.id})
                </option>
              ))}
            </Select>
          </div>
          <div>
            <Label htmlFor="log-level">Level</Label>
            <Select id="log-level" value={level} onChange={(e) => setLevel(e.target.value)} className="h-8 w-32 text-xs">
              <option value="">all levels</option>
              <option value="info">info</option>
              <option value="warn">warn</option>
              <option value="error">error</option>
            </Select>
          </div>
          <div>
            <Label htmlFor="log-search">Search</Label>
            <Input id="log-search" value={text} onChange={(e) => setText(e.target.value)} placeholder="text…" className="h-8 w-40 text-xs" />
          </div>
        </div>
      </CardHeader>
      <CardContent className="p-0">
        <QueryError error={error} what="the logs" />
        <div className="max-h-80 overflow-auto font-mono text-xs" data-testid="log-list">
          {isLoading ? (
            <p className="p-4 font-sans text-sm text-slate-500">Loading…</p>
          ) : shown.length === 0 ? (
            <p className="p-4 font-sans text-sm text-slate-500 dark:text-slate-400">
              {data?.length ? 'Nothing matches the search.' : 'No events yet for this filter.'}
            </p>
          ) : (
            <table className="w-full">
              <tbody>
                {shown.map((e) => (
                  <tr key={e.id} className="border-b border-slate-100 align-top last:border-0 dark:border-slate-800" data-testid="log-entry" data-kind={e.kind}>
                    <td className="py-1 pr-2 pl-4 whitespace-nowrap text-slate-500 dark:text-slate-400">{formatTime(e.at)}</td>
                    <td className="px-2 py-1">
                      <Badge tone={levelTone[e.level as keyof typeof levelTone] ?? 'neutral'} className="font-sans">
                        {e.level}
                      </Badge>
                    </td>
                    <td className="px-2 py-1 whitespace-nowrap text-slate-600 dark:text-slate-300">{e.kind}</td>
                    <td className="px-2 py-1 whitespace-nowrap text-slate-500 dark:text-slate-400">{e.serverId}</td>
                    <td className="w-full py-1 pr-4 pl-2 break-all">{e.message}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </div>
      </CardContent>
    </Card>
  );
}
