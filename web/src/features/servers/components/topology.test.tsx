import { describe, expect, it, vi } from 'vitest';
import { render, screen } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { migration, proc, server } from '@/test/fixtures';
import { Topology } from './topology';

const servers = [server(), server({ id: 'node1', name: 'node1', processCount: 0, schedulable: false }), server({ id: 'node2', status: 'offline', processCount: 0 })];

describe('Topology', () => {
  it('draws every node with its workloads, leaving out ended ones', () => {
    render(
      <Topology
        servers={servers}
        processes={[proc(), proc({ id: 'w-2', name: 'gone', status: 'exited' })]}
        migrations={[migration()]}
      />,
    );
    expect(screen.getByTestId('topology-node-node0')).toHaveAttribute('data-status', 'online');
    expect(screen.getByTestId('topology-node-node2')).toHaveAttribute('data-status', 'offline');
    expect(screen.getByTestId('topology-node-node1')).toHaveAttribute('data-schedulable', 'false');
    expect(screen.getByTestId('topology-node-node1')).toHaveTextContent('online · cordoned');
    expect(screen.getByTestId('topology-node-node0')).toHaveAttribute('data-schedulable', 'true');
    expect(screen.getByTestId('topology-node-node0').querySelector('[data-testid="topology-process-w-1"]')).not.toBeNull();
    expect(screen.queryByTestId('topology-process-w-2')).toBeNull();
    // A finished migration is no arrow.
    expect(screen.queryByTestId('topology-migration-m-1')).toBeNull();
  });

  it('draws a migration in flight as an arrow from source to target', async () => {
    const onSelect = vi.fn();
    render(
      <Topology
        servers={servers}
        processes={[proc({ status: 'migrating' })]}
        migrations={[migration({ status: 'transfer', finishedAt: null })]}
        onSelectMigration={onSelect}
      />,
    );
    const arrow = screen.getByTestId('topology-migration-m-1');
    expect(arrow).toHaveTextContent('counter · transfer');
    expect(arrow.querySelector('path')?.getAttribute('marker-end')).toBe('url(#ferry-arrow)');
    await userEvent.click(arrow);
    expect(onSelect).toHaveBeenCalledWith('m-1');
  });

  it('says what to do when no node has registered', () => {
    render(<Topology servers={[]} processes={[]} migrations={[]} />);
    expect(screen.getByText(/No nodes have registered yet/)).toBeInTheDocument();
  });
});
