import { LogOut } from 'lucide-react';
import { useQueryClient } from '@tanstack/react-query';
import { Button } from '@/components/ui/button';
import { clearToken, getToken } from '@/lib/auth';
import { connection, useConnection } from '@/lib/connection';
import { cn } from '@/lib/utils';
import { ThemeToggle } from './theme-toggle';

function Logo() {
  return (
    <svg viewBox="0 0 32 32" className="h-7 w-7" aria-hidden>
      <rect width="32" height="32" rx="7" className="fill-teal-700 dark:fill-teal-600" />
      <path d="M6 20h20l-3 5H9z" fill="#fff" />
      <path d="M15 7v11M15 7l7 9h-7" stroke="#fff" strokeWidth="2" fill="none" strokeLinejoin="round" />
    </svg>
  );
}

export function Header() {
  const c = useConnection();
  const qc = useQueryClient();
  const live = c.streamSeen && !c.streamDown;
  const hasToken = getToken() != null;
  return (
    <header className="border-b border-slate-200 bg-white/80 backdrop-blur dark:border-slate-800 dark:bg-slate-900/80">
      <div className="mx-auto flex max-w-[1500px] items-center gap-3 px-4 py-3">
        <Logo />
        <div>
          <div className="text-lg leading-none font-semibold tracking-tight">ferry</div>
          <div className="text-xs text-slate-500 dark:text-slate-400">live process migration</div>
        </div>
        <nav className="ml-6 hidden gap-4 text-sm text-slate-600 lg:flex dark:text-slate-300">
          <a href="#topology" className="hover:text-teal-700 dark:hover:text-teal-400">Topology</a>
          <a href="#nodes" className="hover:text-teal-700 dark:hover:text-teal-400">Nodes</a>
          <a href="#processes" className="hover:text-teal-700 dark:hover:text-teal-400">Processes</a>
          <a href="#migration-control" className="hover:text-teal-700 dark:hover:text-teal-400">Migrations</a>
          <a href="#logs" className="hover:text-teal-700 dark:hover:text-teal-400">Logs</a>
        </nav>
        <div className="ml-auto flex items-center gap-2">
          <span
            className={cn('flex items-center gap-1.5 text-xs', live ? 'text-emerald-700 dark:text-emerald-400' : 'text-slate-500')}
            data-testid="live-indicator"
            data-live={live}
          >
            <span className={cn('h-2 w-2 rounded-full', live ? 'bg-emerald-500' : 'bg-slate-400')} />
            {live ? 'live' : 'connecting…'}
          </span>
          {hasToken ? (
            <Button
              variant="ghost"
              size="sm"
              title="Forget the stored token"
              onClick={() => {
                clearToken();
                connection.tokenChanged();
                void qc.invalidateQueries();
              }}
            >
              <LogOut className="h-3.5 w-3.5" /> Sign out
            </Button>
          ) : null}
          <ThemeToggle />
        </div>
      </div>
    </header>
  );
}
