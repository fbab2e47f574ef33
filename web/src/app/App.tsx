import { useConnection } from '@/lib/connection';
import { Header } from '@/components/layout/header';
import { GatewayBanner } from '@/components/layout/gateway-banner';
import { LoginScreen } from '@/components/layout/login-screen';
import { AppProvider } from './provider';
import { Dashboard } from './dashboard';
import { useEventStream } from './event-stream';

function Shell() {
  useEventStream();
  const { authRequired } = useConnection();
  return (
    <div className="min-h-screen">
      <GatewayBanner />
      <Header />
      {authRequired ? <LoginScreen /> : <Dashboard />}
    </div>
  );
}

export function App() {
  return (
    <AppProvider>
      <Shell />
    </AppProvider>
  );
}
