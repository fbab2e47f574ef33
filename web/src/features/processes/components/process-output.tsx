import { useEffect, useRef, useState } from 'react';
import { X } from 'lucide-react';
import { Card, CardContent, CardDescription, CardHeader, CardTitle } from '@/components/ui/card';
import { Button } from '@/components/ui/button';
import { QueryError } from '@/components/query-error';
import { formatTime } from '@/lib/format';
import { cn } from '@/lib/utils';
import type { Process } from '@/types/api';
import { useProcessLogs } from '../api/get-process-logs';

/** A process's own stdout/stderr (GET /api/processes/{id}/logs). */
export function ProcessOutput({ process, onClose }: { process: Process; onClose: () => void }) {
  const live = process.status === 'running' || process.status === 'paused' || process.status === 'migrating';
  const [follow, setFollow] = useState(true);
  const { data, error, isFetching, refetch } = useProcessLogs(process.id, { follow: follow && live });
  const box = useRef<HTMLPreElement>(null);
  const lines = data?.lines ?? [];

  useEffect(() => {
    if (follow && box.current) box.current.scrollTop = box.current.scrollHeight;
  }, [lines.length, follow]);

  return (
    <Card data-testid="process-output">
      <CardHeader>
        <div className="min-w-0">
          <CardTitle>
            Output of <span className="font-mono">{process.name}</span>
          </CardTitle>
          <CardDescription>
            {process.id} on {process.serverId} · address <span data-testid="process-output-address">{process.address ?? '—'}</span> · {lines.length}{' '}
            line{lines.length === 1 ? '' : 's'}
            {isFetching ? ' · reading…' : ''}
          </CardDescription>
        </div>
        <div className="flex items-center gap-2">
          <label className="flex items-center gap-1.5 text-xs text-slate-600 dark:text-slate-300">
            <input type="checkbox" checked={follow} onChange={(e) => setFollow(e.target.checked)} className="accent-teal-600" />
            follow
          </label>
          <Button size="sm" variant="outline" onClick={() => void refetch()}>
            Refresh
          </Button>
          <Button size="icon" variant="ghost" aria-label="Close output" onClick={onClose}>
            <X className="h-4 w-4" />
          </Button>
        </div>
      </CardHeader>
      <CardContent>
        <QueryError error={error} what="the output" />
        <pre
          ref={box}
          className="max-h-72 min-h-24 overflow-auto rounded-md bg-slate-950 p-3 font-mono text-xs leading-5 text-slate-100 dark:bg-black"
        >
          {lines.length === 0 ? (
            <span className="text-slate-500">{data ? 'No output yet.' : 'Loading…'}</span>
          ) : (
            lines.map((l) => (
              <div key={l.line} className={cn('whitespace-pre-wrap', l.stream === 'stderr' && 'text-red-300')}>
                <span className="mr-3 text-slate-500 select-none">{formatTime(l.at)}</span>
                {l.text}
              </div>
            ))
          )}
        </pre>
      </CardContent>
    </Card>
  );
}
