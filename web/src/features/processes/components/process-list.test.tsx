import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { fakeFetch, proc } from '@/test/fixtures';
import { renderWithClient } from '@/test/render';
import { ProcessList } from './process-list';

afterEach(() => vi.unstubAllGlobals());

const noop = () => {};

describe('ProcessList', () => {
  it('tells a new user what to do when there are no processes', async () => {
    const onNew = vi.fn();
    renderWithClient(<ProcessList processes={[]} loading={false} error={null} onNew={onNew} onMigrate={noop} onShowLogs={noop} />);
    const empty = screen.getByTestId('processes-empty');
    expect(empty).toHaveTextContent('No processes yet');
    expect(empty).toHaveTextContent('ferry run --node node0');
    await userEvent.click(screen.getAllByRole('button', { name: /New process/ })[1]);
    expect(onNew).toHaveBeenCalled();
  });

  it('lists processes with their node and offers the actions their state allows', async () => {
    const onMigrate = vi.fn();
    renderWithClient(
      <ProcessList
        processes={[proc(), proc({ id: 'w-2', name: 'paused-one', status: 'paused', serverId: 'node1' }), proc({ id: 'w-3', name: 'done', status: 'exited', exitCode: 0 })]}
        loading={false}
        error={null}
        onNew={noop}
        onMigrate={onMigrate}
        onShowLogs={noop}
      />,
    );
    const rows = screen.getAllByTestId('process-row');
    expect(rows.map((r) => `${r.dataset.processName}@${r.dataset.node}:${r.dataset.status}`)).toEqual([
      'counter@node0:running',
      'paused-one@node1:paused',
      'done@node0:exited',
    ]);
    expect(rows[1].querySelector('[data-action="resume"]')).not.toBeNull();
    expect(rows[2].querySelector('[data-action="migrate"]')).toBeDisabled();
    await userEvent.click(rows[0].querySelector('[data-action="migrate"]') as HTMLElement);
    expect(onMigrate).toHaveBeenCalledWith(expect.objectContaining({ id: 'w-1' }));
  });

  it('stops a process only after a second click, and shows a refusal', async () => {
    const f = fakeFetch({ 'DELETE /api/processes/w-1': [409, { error: { code: 'offline', message: 'server node0 is offline' } }] });
    vi.stubGlobal('fetch', f.fn);
    renderWithClient(<ProcessList processes={[proc()]} loading={false} error={null} onNew={noop} onMigrate={noop} onShowLogs={noop} />);
    const stop = screen.getByRole('button', { name: /Stop/ });
    await userEvent.click(stop);
    expect(f.calls).toHaveLength(0);
    await userEvent.click(screen.getByRole('button', { name: /Confirm/ }));
    await waitFor(() => expect(f.calls).toHaveLength(1));
    expect(f.calls[0].method).toBe('DELETE');
    expect(await screen.findByText(/Stop counter: server node0 is offline/)).toBeInTheDocument();
  });
});
