import { afterEach, describe, expect, it, vi } from 'vitest';
import { fakeFetch, proc } from '@/test/fixtures';
import { queryKeys } from '@/lib/query-keys';
import { getProcesses, processesQuery } from './get-processes';

afterEach(() => vi.unstubAllGlobals());

describe('getProcesses', () => {
  it('asks for live processes by default, and for ended ones too with all', async () => {
    const f = fakeFetch({
      'GET /api/processes': [200, [proc()]],
      'GET /api/processes?all=true': [200, [proc(), proc({ id: 'w-2', status: 'exited', exitCode: 0 })]],
    });
    vi.stubGlobal('fetch', f.fn);
    expect((await getProcesses()).map((p) => p.id)).toEqual(['w-1']);
    expect((await getProcesses(true)).map((p) => p.id)).toEqual(['w-1', 'w-2']);
    expect(f.calls.map((c) => c.url.replace(/^.*\/api/, '/api'))).toEqual(['/api/processes', '/api/processes?all=true']);
  });

  it('keeps the two lists apart, both under the processes prefix events invalidate', () => {
    const [live, all] = [processesQuery(false).queryKey, processesQuery(true).queryKey];
    expect(live).not.toEqual(all);
    for (const k of [live, all]) expect(k.slice(0, 1)).toEqual([...queryKeys.processes]);
  });
});
