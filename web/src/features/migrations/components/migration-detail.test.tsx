import { describe, expect, it } from 'vitest';
import { render, screen } from '@testing-library/react';
import { migration, phaseEvent } from '@/test/fixtures';
import { MigrationDetail } from './migration-detail';

describe('MigrationDetail', () => {
  it('shows the phase timeline, downtime and bytes of a completed migration', () => {
    render(<MigrationDetail migration={migration()} events={[]} processName="counter" />);
    expect(screen.getByTestId('migration-status')).toHaveTextContent('completed');
    const bars = screen.getAllByTestId('timeline-bar');
    expect(bars.map((b) => b.dataset.phase)).toEqual(['preflight', 'freeze', 'checkpoint', 'transfer', 'restore', 'commit']);
    expect(screen.getByTestId('timeline-downtime')).toHaveTextContent('105 ms');
    expect(screen.getByTestId('figure-bytes-raw')).toHaveTextContent('373 KiB');
    expect(screen.getByTestId('figure-bytes-wire')).toHaveTextContent('58.3 KiB');
    expect(screen.queryByTestId('migration-error')).toBeNull();
  });

  it('shows the error of a rolled-back migration in a red box', () => {
    const m = migration({ status: 'rolled_back', error: 'restore failed on node1: criu exited 1', phases: [], downtimeMs: null });
    render(<MigrationDetail migration={m} events={[phaseEvent('m-1', 'preflight', 0), phaseEvent('m-1', 'rollback', 1)]} />);
    const box = screen.getByTestId('migration-error');
    expect(box).toHaveTextContent('Rolled back');
    expect(box).toHaveTextContent('restore failed on node1: criu exited 1');
    expect(box).toHaveAttribute('role', 'alert');
  });

  it('shows a failed migration plainly even without an error text', () => {
    render(<MigrationDetail migration={migration({ status: 'failed', error: null, phases: [] })} events={[]} />);
    expect(screen.getByTestId('migration-error')).toHaveTextContent('Migration failed.');
  });

  it('follows a running migration phase by phase', () => {
    const m = migration({ status: 'transfer', phases: [], finishedAt: null });
    const events = ['preflight', 'freeze', 'checkpoint', 'transfer'].map((p, i) => phaseEvent('m-1', p, i));
    render(<MigrationDetail migration={m} events={events} />);
    const steps = screen.getAllByTestId('progress-step');
    expect(steps.map((s) => `${s.dataset.phase}:${s.dataset.state}`)).toEqual([
      'preflight:done',
      'freeze:done',
      'checkpoint:done',
      'transfer:current',
      'restore:pending',
      'commit:pending',
    ]);
    expect(screen.getByTestId('transfer-progress')).toHaveTextContent('on the wire');
    expect(screen.queryByTestId('phase-timeline')).toBeNull();
  });
});

describe('MigrationDetail: restores and failovers', () => {
  it('marks a failover, expects no freeze of the lost node, and says what a rollback left', () => {
    const m = migration({ id: 'm-9', mode: 'failover', status: 'transfer', phases: [], finishedAt: null, sourceServerId: 'node0', targetServerId: 'node1' });
    const { unmount } = render(<MigrationDetail migration={m} events={[phaseEvent('m-9', 'preflight', 0), phaseEvent('m-9', 'transfer', 1)]} />);
    expect(screen.getByTestId('migration-mode')).toHaveTextContent('failover');
    expect(screen.getByTestId('migration-mode').dataset.mode).toBe('failover');
    expect(screen.getAllByTestId('progress-step').map((s) => `${s.dataset.phase}:${s.dataset.state}`)).toEqual([
      'preflight:done',
      'transfer:current',
      'restore:pending',
      'commit:pending',
    ]);
    unmount();
    render(<MigrationDetail migration={migration({ mode: 'restore', status: 'rolled_back', error: 'checkpoint c-1 is held nowhere', phases: [] })} events={[]} />);
    expect(screen.getByTestId('migration-mode')).toHaveTextContent('restore');
    expect(screen.getByTestId('migration-error')).toHaveTextContent('Rolled back — nothing was restored on node1.');
  });

  it('shows no mode badge on an ordinary migration', () => {
    render(<MigrationDetail migration={migration()} events={[]} />);
    expect(screen.queryByTestId('migration-mode')).toBeNull();
  });
});
