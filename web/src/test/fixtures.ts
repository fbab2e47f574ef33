import type { FerryEvent, Migration, Process, Server } from '@/types/api';

export function server(over: Partial<Server> = {}): Server {
  return {
    id: 'node0',
    name: 'node0',
    address: '10.0.0.2:50051',
    status: 'online',
    cpuPercent: 12.5,
    memoryTotalBytes: 8 * 1024 ** 3,
    memoryUsedBytes: 2 * 1024 ** 3,
    processCount: 1,
    criuVersion: '4.2',
    kernel: '6.1.0',
    lastSeenAt: '2026-11-27T12:00:00.000Z',
    schedulable: true,
    ...over,
  };
}

export function proc(over: Partial<Process> = {}): Process {
  return {
    id: 'w-1',
    name: 'counter',
    serverId: 'node0',
    status: 'running',
    pid: 42,
    cpuPercent: 0.5,
    memoryBytes: 3 * 1024 * 1024,
    engine: 'criu',
    command: ['sh', '-c', 'echo hi'],
    startedAt: '2026-11-27T12:00:00.000Z',
    exitCode: null,
    exitSignal: null,
    lastSeen: '2026-11-27T12:00:00.000Z',
    heldForMigration: null,
    address: null,
    ...over,
  };
}

export function migration(over: Partial<Migration> = {}): Migration {
  return {
    id: 'm-1',
    processId: 'w-1',
    sourceServerId: 'node0',
    targetServerId: 'node1',
    mode: 'stop-and-copy',
    status: 'completed',
    error: null,
    freezeMs: 3,
    dumpMs: 44,
    transferMs: 3,
    restoreMs: 50,
    downtimeMs: 105,
    bytesRaw: 382238,
    bytesWire: 59749,
    phases: [
      { phase: 'preflight', startedAt: '2026-11-27T12:41:43.816Z', endedAt: '2026-11-27T12:41:43.820Z' },
      { phase: 'freeze', startedAt: '2026-11-27T12:41:43.820Z', endedAt: '2026-11-27T12:41:43.823Z' },
      { phase: 'checkpoint', startedAt: '2026-11-27T12:41:43.823Z', endedAt: '2026-11-27T12:41:43.867Z' },
      { phase: 'transfer', startedAt: '2026-11-27T12:41:43.867Z', endedAt: '2026-11-27T12:41:43.870Z' },
      { phase: 'restore', startedAt: '2026-11-27T12:41:43.870Z', endedAt: '2026-11-27T12:41:43.920Z' },
      { phase: 'commit', startedAt: '2026-11-27T12:41:43.920Z', endedAt: '2026-11-27T12:41:43.925Z' },
    ],
    startedAt: '2026-11-27T12:41:43.815Z',
    finishedAt: '2026-11-27T12:41:43.926Z',
    ...over,
  };
}

let nextId = 100;
export function event(over: Partial<FerryEvent> = {}): FerryEvent {
  nextId += 1;
  return {
    id: nextId,
    at: '2026-11-27T12:41:43.926Z',
    kind: 'process_started',
    level: 'info',
    serverId: 'node0',
    processId: 'w-1',
    message: 'process w-1 started on node0',
    data: {},
    ...over,
  };
}

export function phaseEvent(migrationId: string, phase: string, index: number, over: Partial<FerryEvent> = {}): FerryEvent {
  return event({
    kind: 'migration_phase',
    message: `migration ${migrationId}: ${phase}`,
    data: { migrationId, phase, index, bytesRaw: 1000 * index, bytesWire: 500 * index },
    ...over,
  });
}

/** A fetch stand-in answering from a table of `METHOD path` → [status, body]. */
export function fakeFetch(routes: Record<string, [number, unknown] | (() => [number, unknown])>) {
  const calls: { method: string; url: string; headers: Record<string, string>; body?: string }[] = [];
  const fn = async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = String(input);
    const method = init?.method ?? 'GET';
    calls.push({ method, url, headers: (init?.headers ?? {}) as Record<string, string>, body: init?.body as string | undefined });
    const path = url.split('?')[0];
    const route = routes[`${method} ${url}`] ?? routes[`${method} ${path}`];
    if (!route) return new Response(JSON.stringify({ error: { code: 'not_found', message: `no route ${method} ${url}` } }), { status: 404 });
    const [status, body] = typeof route === 'function' ? route() : route;
    return new Response(typeof body === 'string' ? body : JSON.stringify(body), {
      status,
      headers: { 'Content-Type': 'application/json' },
    });
  };
  return { fn, calls };
}
