import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { fakeFetch, migration, proc, server } from '@/test/fixtures';
import { renderWithClient } from '@/test/render';
import { formatTime } from '@/lib/format';
import type { Checkpoint } from '@/types/api';
import { CheckpointsPanel } from './checkpoints-panel';

afterEach(() => vi.unstubAllGlobals());

function checkpoint(over: Partial<Checkpoint> = {}): Checkpoint {
  return {
    id: 'c-0123456789ab',
    seq: 3,
    takenAt: '2026-12-08T01:02:03.456Z',
    bytes: 123456,
    rawBytes: 4567890,
    freezeMs: 42,
    node: 'node0',
    holders: ['node0', 'node1', 's3'],
    ...over,
  };
}

const older = checkpoint({ id: 'c-older', seq: 2, takenAt: '2026-12-08T01:01:03.000Z', holders: ['node1'] });
const servers = [server(), server({ id: 'node1', name: 'node1' }), server({ id: 'node2', status: 'offline' })];
const protectedProc = proc({ checkpointIntervalSeconds: 30 });

describe('CheckpointsPanel', () => {
  it('lists the checkpoints newest first: time, size raw → stored, freeze, holders with s3 apart', async () => {
    vi.stubGlobal('fetch', fakeFetch({ 'GET /api/processes/w-1/checkpoints': [200, { checkpoints: [checkpoint(), older] }] }).fn);
    renderWithClient(<CheckpointsPanel process={protectedProc} servers={servers} onClose={() => {}} />);
    const rows = await screen.findAllByTestId('checkpoint-row');
    expect(rows.map((r) => r.dataset.checkpointId)).toEqual(['c-0123456789ab', 'c-older']);
    expect(rows[0]).toHaveTextContent(formatTime('2026-12-08T01:02:03.456Z'));
    expect(rows[0]).toHaveTextContent('#3');
    expect(within(rows[0]).getByTestId('checkpoint-size')).toHaveTextContent('4.4 MiB → 121 KiB');
    expect(rows[0]).toHaveTextContent('42 ms');
    const holders = within(rows[0]).getAllByTestId('checkpoint-holder');
    expect(holders.map((h) => h.dataset.holder)).toEqual(['node0', 'node1', 's3']);
    expect(holders[2].className).not.toEqual(holders[0].className);
    expect(holders[2]).toHaveAttribute('title', 'Kept in the object store');
    expect(screen.getByTestId('checkpoints-protection')).toHaveTextContent('a checkpoint every 30s');
  });

  it('says when there are none, and that an unprotected process only has those taken by hand', async () => {
    vi.stubGlobal('fetch', fakeFetch({ 'GET /api/processes/w-1/checkpoints': [200, { checkpoints: [] }] }).fn);
    renderWithClient(<CheckpointsPanel process={proc()} servers={servers} onClose={() => {}} />);
    expect(await screen.findByTestId('checkpoints-empty')).toHaveTextContent('No checkpoints yet');
    expect(screen.getByTestId('checkpoints-protection')).toHaveTextContent('unprotected');
  });

  it('takes a checkpoint now and lists it first', async () => {
    const fresh = checkpoint({ id: 'c-fresh', seq: 4, takenAt: '2026-12-08T01:03:00.000Z' });
    let listed = [checkpoint()];
    const f = fakeFetch({
      'GET /api/processes/w-1/checkpoints': () => [200, { checkpoints: listed }],
      'POST /api/processes/w-1/checkpoints': () => {
        listed = [fresh, ...listed];
        return [201, fresh];
      },
    });
    vi.stubGlobal('fetch', f.fn);
    renderWithClient(<CheckpointsPanel process={protectedProc} servers={servers} onClose={() => {}} />);
    await screen.findAllByTestId('checkpoint-row');
    await userEvent.click(screen.getByRole('button', { name: /Checkpoint now/ }));
    await waitFor(() => expect(screen.getAllByTestId('checkpoint-row').map((r) => r.dataset.checkpointId)).toEqual(['c-fresh', 'c-0123456789ab']));
    const post = f.calls.find((c) => c.method === 'POST');
    expect(post?.url).toMatch(/\/api\/processes\/w-1\/checkpoints$/);
  });

  it('cannot checkpoint a process that does not run, and shows a refusal inline', async () => {
    vi.stubGlobal(
      'fetch',
      fakeFetch({
        'GET /api/processes/w-1/checkpoints': [200, { checkpoints: [] }],
        'POST /api/processes/w-1/checkpoints': [409, { error: { code: 'conflict', message: 'w-1 is migrating' } }],
      }).fn,
    );
    const { unmount } = renderWithClient(<CheckpointsPanel process={proc({ status: 'exited' })} servers={servers} onClose={() => {}} />);
    expect(screen.getByRole('button', { name: /Checkpoint now/ })).toBeDisabled();
    unmount();
    renderWithClient(<CheckpointsPanel process={proc()} servers={servers} onClose={() => {}} />);
    await userEvent.click(screen.getByRole('button', { name: /Checkpoint now/ }));
    expect(await screen.findByTestId('checkpoint-error')).toHaveTextContent('Checkpoint counter: w-1 is migrating');
  });

  it('restores only after asking once more, to the node chosen, and reports the migration', async () => {
    const f = fakeFetch({
      'GET /api/processes/w-1/checkpoints': [200, { checkpoints: [checkpoint(), older] }],
      'POST /api/processes/w-1/restore': [202, migration({ id: 'm-r', mode: 'restore', status: 'pending', targetServerId: 'node1' })],
    });
    vi.stubGlobal('fetch', f.fn);
    const onRestored = vi.fn();
    renderWithClient(<CheckpointsPanel process={protectedProc} servers={servers} onClose={() => {}} onRestored={onRestored} />);
    const rows = await screen.findAllByTestId('checkpoint-row');
    await userEvent.click(within(rows[1]).getByRole('button', { name: /Restore/ }));
    const confirm = screen.getByTestId('restore-confirm');
    expect(confirm).toHaveTextContent(`Restore counter to the checkpoint of ${formatTime(older.takenAt)}? What ran since is lost.`);
    expect(f.calls.filter((c) => c.method === 'POST')).toHaveLength(0);
    // Offline nodes cannot be chosen; by default the coordinator chooses.
    expect(within(confirm).getByRole('option', { name: /node2/ })).toBeDisabled();
    expect(within(confirm).getByLabelText('Target node')).toHaveValue('');
    await userEvent.selectOptions(within(confirm).getByLabelText('Target node'), 'node1');
    await userEvent.click(within(confirm).getByRole('button', { name: 'Confirm restore' }));
    await waitFor(() => expect(onRestored).toHaveBeenCalledWith(expect.objectContaining({ id: 'm-r', mode: 'restore' })));
    const post = f.calls.find((c) => c.method === 'POST');
    expect(post?.url).toMatch(/\/api\/processes\/w-1\/restore$/);
    expect(JSON.parse(post?.body ?? '')).toEqual({ checkpointId: 'c-older', serverId: 'node1' });
    expect(screen.queryByTestId('restore-confirm')).toBeNull();
    expect(screen.getByTestId('restore-started')).toHaveTextContent('m-r');
  });

  it("sends no node when the coordinator chooses, and shows the API's refusal inline", async () => {
    const f = fakeFetch({
      'GET /api/processes/w-1/checkpoints': [200, { checkpoints: [checkpoint()] }],
      'POST /api/processes/w-1/restore': [409, { error: { code: 'conflict', message: 'checkpoint c-0123456789ab is held by no online node' } }],
    });
    vi.stubGlobal('fetch', f.fn);
    renderWithClient(<CheckpointsPanel process={protectedProc} servers={servers} onClose={() => {}} />);
    await userEvent.click(await screen.findByRole('button', { name: /Restore/ }));
    await userEvent.click(screen.getByRole('button', { name: 'Cancel' }));
    expect(screen.queryByTestId('restore-confirm')).toBeNull();
    await userEvent.click(screen.getByRole('button', { name: /Restore/ }));
    await userEvent.click(screen.getByRole('button', { name: 'Confirm restore' }));
    expect(await screen.findByTestId('restore-error')).toHaveTextContent('Restore counter: checkpoint c-0123456789ab is held by no online node');
    const posts = f.calls.filter((c) => c.method === 'POST');
    expect(posts).toHaveLength(1);
    expect(JSON.parse(posts[0].body ?? '')).toEqual({ checkpointId: 'c-0123456789ab' });
  });
});
