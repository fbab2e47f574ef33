import { describe, expect, it } from 'vitest';
import { render, screen } from '@testing-library/react';
import { migration } from '@/test/fixtures';
import { MigrationHistory } from './migration-history';

describe('MigrationHistory', () => {
  it('sets failovers and restores apart from ordinary migrations', () => {
    render(
      <MigrationHistory
        migrations={[
          migration({ id: 'm-1', startedAt: '2026-12-08T01:00:00.000Z' }),
          migration({ id: 'm-2', mode: 'failover', startedAt: '2026-12-08T01:01:00.000Z' }),
          migration({ id: 'm-3', mode: 'restore', status: 'restore', startedAt: '2026-12-08T01:02:00.000Z' }),
        ]}
        names={new Map([['w-1', 'counter']])}
        selectedId={null}
        onSelect={() => {}}
      />,
    );
    const items = screen.getAllByTestId('migration-history-item');
    expect(items.map((i) => [i.dataset.migrationId, i.querySelector('[data-testid="migration-mode"]')?.getAttribute('data-mode') ?? null])).toEqual([
      ['m-3', 'restore'],
      ['m-2', 'failover'],
      ['m-1', null],
    ]);
  });
});
