import { WifiOff } from 'lucide-react';
import { gatewayUnreachable, useConnection } from '@/lib/connection';

/** A banner while the gateway cannot be reached; it goes away by itself when it answers again. */
export function GatewayBanner() {
  const c = useConnection();
  if (!gatewayUnreachable(c)) return null;
  return (
    <div
      role="alert"
      data-testid="gateway-banner"
      className="sticky top-0 z-40 flex items-center justify-center gap-2 border-b border-red-300 bg-red-600 px-4 py-2 text-sm font-medium text-white dark:border-red-900 dark:bg-red-800"
    >
      <WifiOff className="h-4 w-4" />
      The ferry gateway is unreachable — showing the last known state. Reconnecting…
    </div>
  );
}
