import { useState, type FormEvent } from 'react';
import { KeyRound } from 'lucide-react';
import { useQueryClient } from '@tanstack/react-query';
import { Card } from '@/components/ui/card';
import { Input } from '@/components/ui/input';
import { Label } from '@/components/ui/label';
import { Button } from '@/components/ui/button';
import { Alert } from '@/components/ui/alert';
import { getToken, setToken } from '@/lib/auth';
import { connection } from '@/lib/connection';

/** Shown when the gateway answers 401: a token is needed, or the stored one was refused. */
export function LoginScreen() {
  const qc = useQueryClient();
  const [value, setValue] = useState('');
  const hadToken = getToken() != null;

  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (!value.trim()) return;
    setToken(value);
    connection.tokenChanged();
    void qc.invalidateQueries();
  };

  return (
    <div className="flex min-h-[70vh] items-center justify-center p-4" data-testid="login-screen">
      <Card className="w-full max-w-md p-6">
        <div className="mb-4 flex items-center gap-3">
          <div className="rounded-lg bg-teal-50 p-2 text-teal-700 dark:bg-teal-950 dark:text-teal-300">
            <KeyRound className="h-5 w-5" />
          </div>
          <div>
            <h1 className="text-lg font-semibold">This gateway needs a token</h1>
            <p className="text-sm text-slate-500 dark:text-slate-400">
              Paste the token <code className="rounded bg-slate-100 px-1 dark:bg-slate-800">ferry up</code> printed.
            </p>
          </div>
        </div>
        {hadToken ? (
          <Alert tone="error" className="mb-3">
            The stored token was refused. Paste a current one.
          </Alert>
        ) : null}
        <form onSubmit={submit} className="space-y-3">
          <div>
            <Label htmlFor="token">Token</Label>
            <Input
              id="token"
              type="password"
              autoComplete="off"
              value={value}
              onChange={(e) => setValue(e.target.value)}
              placeholder="the operator (or read-only) token"
              className="font-mono"
              autoFocus
            />
          </div>
          <Button type="submit" className="w-full" disabled={!value.trim()}>
            Sign in
          </Button>
          <p className="text-xs text-slate-500 dark:text-slate-400">The token is kept in this browser only (localStorage).</p>
        </form>
      </Card>
    </div>
  );
}
