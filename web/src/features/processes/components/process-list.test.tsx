import { useState } from 'react';
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

describe('ProcessList: what the coordinator cannot vouch for', () => {
  it('shows a process of an offline node as unknown with when it was last seen, and offers no action on it', () => {
    renderWithClient(
      <ProcessList
        processes={[proc({ status: 'unknown', lastSeen: '2026-11-27T12:34:56.000Z' })]}
        loading={false}
        error={null}
        onNew={noop}
        onMigrate={noop}
        onShowLogs={noop}
      />,
    );
    const row = screen.getByTestId('process-row');
    expect(row.dataset.status).toBe('unknown');
    expect(screen.getByTestId('process-status')).toHaveTextContent('unknown');
    const detail = screen.getByTestId('process-status-detail');
    expect(detail).toHaveTextContent(/node offline · last seen \d\d:\d\d:\d\d/);
    expect(detail.title).toBe('last report 2026-11-27T12:34:56.000Z');
    for (const action of ['pause', 'stop', 'migrate']) expect(row.querySelector(`[data-action="${action}"]`)).toBeDisabled();
  });

  it('shows a held copy with the migration it waits for, and offers no action on it', () => {
    renderWithClient(
      <ProcessList
        processes={[proc({ status: 'held', serverId: 'node1', heldForMigration: 'm-0a1b2c' })]}
        loading={false}
        error={null}
        onNew={noop}
        onMigrate={noop}
        onShowLogs={noop}
      />,
    );
    expect(screen.getByTestId('process-status-detail')).toHaveTextContent('held copy · m-0a1b2c');
    const row = screen.getByTestId('process-row');
    for (const action of ['pause', 'stop', 'migrate']) expect(row.querySelector(`[data-action="${action}"]`)).toBeDisabled();
  });

  it('toggles ended processes', async () => {
    const onToggleEnded = vi.fn();
    function Toggling() {
      const [all, setAll] = useState(false);
      return (
        <ProcessList
          processes={[proc()]}
          loading={false}
          error={null}
          onNew={noop}
          onMigrate={noop}
          onShowLogs={noop}
          showEnded={all}
          onToggleEnded={(v) => {
            onToggleEnded(v);
            setAll(v);
          }}
        />
      );
    }
    renderWithClient(<Toggling />);
    const toggle = screen.getByTestId('toggle-ended');
    expect(toggle).toHaveTextContent('Show ended');
    expect(toggle).toHaveAttribute('aria-pressed', 'false');
    await userEvent.click(toggle);
    expect(onToggleEnded).toHaveBeenCalledWith(true);
    expect(screen.getByTestId('toggle-ended')).toHaveTextContent('Hide ended');
    expect(screen.getByTestId('toggle-ended')).toHaveAttribute('aria-pressed', 'true');
  });
});

describe('ProcessList: addresses', () => {
  it("shows a workload's own address, and a dash for one on the node's network", () => {
    renderWithClient(
      <ProcessList
        processes={[proc({ address: '10.231.254.129' }), proc({ id: 'w-2', name: 'plain', address: null })]}
        loading={false}
        error={null}
        onNew={noop}
        onMigrate={noop}
        onShowLogs={noop}
      />,
    );
    expect(screen.getByRole('columnheader', { name: 'Address' })).toBeInTheDocument();
    const cells = screen.getAllByTestId('process-address').map((c) => c.textContent);
    expect(cells).toEqual(['10.231.254.129', '—']);
  });
});

describe('ProcessList: protection', () => {
  it('badges a protected process with its interval, and opens its checkpoints', async () => {
    const onShowCheckpoints = vi.fn();
    renderWithClient(
      <ProcessList
        processes={[proc({ checkpointIntervalSeconds: 120 }), proc({ id: 'w-2', name: 'plain' }), proc({ id: 'w-3', name: 'nulled', checkpointIntervalSeconds: null })]}
        loading={false}
        error={null}
        onNew={noop}
        onMigrate={noop}
        onShowLogs={noop}
        onShowCheckpoints={onShowCheckpoints}
      />,
    );
    const rows = new Map(screen.getAllByTestId('process-row').map((r) => [r.dataset.processId, r]));
    const badge = (id: string) => rows.get(id)?.querySelector('[data-testid="process-protected"]') ?? null;
    expect(badge('w-1')).toHaveTextContent('2m');
    expect(badge('w-1')).toHaveAttribute('title', 'Protected: a checkpoint every 2m');
    expect(badge('w-2')).toBeNull();
    expect(badge('w-3')).toBeNull();
    await userEvent.click(rows.get('w-2')?.querySelector('[data-action="checkpoints"]') as HTMLElement);
    expect(onShowCheckpoints).toHaveBeenCalledWith(expect.objectContaining({ id: 'w-2' }));
  });
});
