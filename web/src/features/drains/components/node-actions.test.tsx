import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { fakeFetch, server } from '@/test/fixtures';
import { renderWithClient } from '@/test/render';
import type { Drain } from '@/types/api';
import { NodeActions } from './node-actions';

afterEach(() => vi.unstubAllGlobals());

function drain(over: Partial<Drain> = {}): Drain {
  return {
    id: 'd-1',
    serverId: 'node0',
    status: 'running',
    deadlineSeconds: 60,
    estimateMs: 4200,
    fits: true,
    concurrency: 2,
    message: null,
    workloads: [
      { processId: 'w-2', memoryBytes: 256 * 1024 ** 2, mode: 'stop-and-copy', targetServerId: 'node1', migrationId: 'm-2', status: 'completed', error: null },
      { processId: 'w-1', memoryBytes: 16 * 1024 ** 2, mode: 'stop-and-copy', targetServerId: 'node1', migrationId: 'm-1', status: 'migrating', error: null },
      { processId: 'w-3', memoryBytes: 8 * 1024 ** 2, mode: 'stop-and-copy', targetServerId: null, migrationId: null, status: 'failed', error: 'no node can take it' },
    ],
    startedAt: '2026-11-27T12:00:00.000Z',
    endedAt: null,
    ...over,
  };
}

describe('NodeActions', () => {
  it('shows each node as schedulable, cordoned or draining, with the actions that fit', () => {
    renderWithClient(
      <NodeActions
        servers={[server(), server({ id: 'node1', schedulable: false }), server({ id: 'node2' })]}
        drains={[drain({ serverId: 'node2' })]}
      />,
    );
    const rows = screen.getAllByTestId('node-row');
    expect(rows.map((r) => `${r.dataset.node}:${r.querySelector('[data-testid="node-schedulable"]')?.textContent}`)).toEqual([
      'node0:schedulable',
      'node1:cordoned',
      'node2:draining',
    ]);
    expect(rows[0].querySelector('[data-action="cordon"]')).not.toBeNull();
    expect(rows[1].querySelector('[data-action="uncordon"]')).not.toBeNull();
    expect(rows[2].querySelector('[data-action="drain"]')).toBeDisabled();
  });

  it('shows a drain\'s progress, each workload\'s step and error', () => {
    renderWithClient(<NodeActions servers={[server()]} drains={[drain({ fits: false, message: 'the drain cannot fit its deadline of 60 s' })]} />);
    expect(screen.getByTestId('drain-count')).toHaveTextContent('1 of 3 moved');
    expect(screen.getAllByTestId('drain-workload').map((w) => w.dataset.status)).toEqual(['completed', 'migrating', 'failed']);
    expect(screen.getByText('no node can take it')).toBeInTheDocument();
    expect(screen.getByTestId('drain-message')).toHaveTextContent('cannot fit its deadline');
  });

  it('cordons a node, and drains one with the deadline given after a second click', async () => {
    const f = fakeFetch({
      'POST /api/servers/node0/cordon': [200, server({ schedulable: false })],
      'POST /api/servers/node0/drain': [202, drain()],
      'GET /api/drains': [200, [drain()]],
      'GET /api/servers': [200, [server({ schedulable: false })]],
    });
    vi.stubGlobal('fetch', f.fn);
    renderWithClient(<NodeActions servers={[server()]} drains={[]} />);
    await userEvent.click(screen.getByRole('button', { name: /Cordon/ }));
    await waitFor(() => expect(f.calls.some((c) => c.url.endsWith('/api/servers/node0/cordon'))).toBe(true));
    await userEvent.type(screen.getByTestId('drain-deadline'), '2m');
    await userEvent.click(screen.getByRole('button', { name: /Drain/ }));
    expect(f.calls.some((c) => c.url.endsWith('/drain'))).toBe(false);
    await userEvent.click(screen.getByRole('button', { name: /Confirm drain/ }));
    await waitFor(() => expect(f.calls.some((c) => c.url.endsWith('/drain'))).toBe(true));
    const call = f.calls.find((c) => c.url.endsWith('/drain'));
    expect(JSON.parse(call?.body ?? '{}')).toEqual({ deadlineSeconds: 120 });
  });

  it('refuses a deadline the API would refuse, and shows a refusal', async () => {
    const f = fakeFetch({ 'POST /api/servers/node0/drain': [409, { error: { code: 'conflict', message: 'node node0 is already being drained (drain d-9)' } }] });
    vi.stubGlobal('fetch', f.fn);
    renderWithClient(<NodeActions servers={[server()]} drains={[]} />);
    await userEvent.type(screen.getByTestId('drain-deadline'), '2x');
    expect(screen.getByRole('button', { name: /Drain/ })).toBeDisabled();
    await userEvent.clear(screen.getByTestId('drain-deadline'));
    await userEvent.click(screen.getByRole('button', { name: /Drain/ }));
    await userEvent.click(screen.getByRole('button', { name: /Confirm drain/ }));
    expect(await screen.findByText(/Drain node0: node node0 is already being drained/)).toBeInTheDocument();
    expect(JSON.parse(f.calls[0].body ?? '{}')).toEqual({});
  });
});
