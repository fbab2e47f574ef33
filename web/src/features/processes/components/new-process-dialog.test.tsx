import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { fakeFetch, proc, server } from '@/test/fixtures';
import { renderWithClient } from '@/test/render';
import { NewProcessDialog } from './new-process-dialog';

afterEach(() => vi.unstubAllGlobals());

const servers = [server(), server({ id: 'node1', name: 'node1' }), server({ id: 'node2', status: 'offline' })];

describe('NewProcessDialog', () => {
  it('previews the command as argv', async () => {
    renderWithClient(<NewProcessDialog open onClose={() => {}} servers={servers} />);
    await userEvent.type(screen.getByLabelText('Command'), `sh -c 'echo "hi there"; sleep 9'`);
    const preview = screen.getByTestId('argv-preview');
    expect(preview).toHaveTextContent('argv (3)');
    const items = preview.querySelectorAll('li');
    expect([...items].map((li) => li.lastChild?.textContent)).toEqual(['sh', '-c', 'echo "hi there"; sleep 9']);
    // Offline nodes cannot be chosen.
    expect(screen.getByRole('option', { name: /node2/ })).toBeDisabled();
  });

  it("posts the process and shows the API's validation message inline on a 4xx", async () => {
    const f = fakeFetch({ 'POST /api/processes': [400, { error: { code: 'bad_request', message: 'the agent refuses: no such program "nope"' } }] });
    vi.stubGlobal('fetch', f.fn);
    const onClose = vi.fn();
    renderWithClient(<NewProcessDialog open onClose={onClose} servers={servers} />);
    await userEvent.type(screen.getByLabelText('Name'), 'demo');
    await userEvent.type(screen.getByLabelText('Command'), 'nope --flag');
    await userEvent.selectOptions(screen.getByLabelText('Node'), 'node1');
    await userEvent.selectOptions(screen.getByLabelText('Engine'), 'cooperative');
    await userEvent.click(screen.getByRole('button', { name: 'Start process' }));
    expect(await screen.findByTestId('new-process-error')).toHaveTextContent('the agent refuses: no such program "nope"');
    expect(onClose).not.toHaveBeenCalled();
    expect(JSON.parse(f.calls[0].body ?? '')).toEqual({ name: 'demo', command: ['nope', '--flag'], serverId: 'node1', engine: 'cooperative' });
  });

  it('closes after the process started', async () => {
    vi.stubGlobal('fetch', fakeFetch({ 'POST /api/processes': [201, proc()] }).fn);
    const onClose = vi.fn();
    const onCreated = vi.fn();
    renderWithClient(<NewProcessDialog open onClose={onClose} servers={servers} onCreated={onCreated} />);
    await userEvent.type(screen.getByLabelText('Command'), 'sleep 60');
    await userEvent.click(screen.getByRole('button', { name: 'Start process' }));
    await waitFor(() => expect(onClose).toHaveBeenCalled());
    expect(onCreated).toHaveBeenCalledWith(expect.objectContaining({ id: 'w-1' }));
  });

  it('refuses an unterminated quote before asking the API', async () => {
    const f = fakeFetch({});
    vi.stubGlobal('fetch', f.fn);
    renderWithClient(<NewProcessDialog open onClose={() => {}} servers={servers} />);
    await userEvent.type(screen.getByLabelText('Command'), `sh -c 'oops`);
    await userEvent.click(screen.getByRole('button', { name: 'Start process' }));
    expect(screen.getAllByText(/Unterminated single quote/).length).toBeGreaterThan(0);
    expect(f.calls).toHaveLength(0);
  });

  it('says when the token is read-only', async () => {
    vi.stubGlobal('fetch', fakeFetch({ 'POST /api/processes': [403, { error: { code: 'forbidden', message: 'POST /api/processes needs an operator token; this token is read-only' } }] }).fn);
    renderWithClient(<NewProcessDialog open onClose={() => {}} servers={servers} />);
    await userEvent.type(screen.getByLabelText('Command'), 'sleep 60');
    await userEvent.click(screen.getByRole('button', { name: 'Start process' }));
    expect(await screen.findByTestId('new-process-error')).toHaveTextContent(/token is read-only/i);
  });

  it('asks for a network only when one is chosen', async () => {
    const f = fakeFetch({ 'POST /api/processes': [409, { error: { code: 'no_address', message: 'no free address in the workload range 10.0.0.0/30: 2 of 2 in use' } }] });
    vi.stubGlobal('fetch', f.fn);
    renderWithClient(<NewProcessDialog open onClose={() => {}} servers={servers} />);
    expect(screen.getByLabelText('Network')).toHaveValue('default');
    await userEvent.type(screen.getByLabelText('Command'), 'sleep 60');
    await userEvent.selectOptions(screen.getByLabelText('Network'), 'own');
    await userEvent.click(screen.getByRole('button', { name: 'Start process' }));
    expect(await screen.findByTestId('new-process-error')).toHaveTextContent('2 of 2 in use');
    expect(JSON.parse(f.calls[0].body ?? '')).toEqual({ name: 'sleep', command: ['sleep', '60'], serverId: 'node0', engine: 'criu', network: 'own' });
  });
});

describe('NewProcessDialog: checkpoint interval', () => {
  it('refuses an interval outside 5 s to 24 h inline, before asking the API', async () => {
    const f = fakeFetch({});
    vi.stubGlobal('fetch', f.fn);
    renderWithClient(<NewProcessDialog open onClose={() => {}} servers={servers} />);
    await userEvent.type(screen.getByLabelText('Command'), 'sleep 60');
    expect(screen.queryByTestId('checkpoint-interval-error')).toBeNull();
    for (const bad of ['3s', '25h', '1.5m', 'often']) {
      await userEvent.clear(screen.getByLabelText('Checkpoint every'));
      await userEvent.type(screen.getByLabelText('Checkpoint every'), bad);
      expect(screen.getByTestId('checkpoint-interval-error')).toHaveTextContent('5 s to 24 h');
      expect(screen.getByLabelText('Checkpoint every')).toHaveAttribute('aria-invalid', 'true');
      await userEvent.click(screen.getByRole('button', { name: 'Start process' }));
    }
    expect(f.calls).toHaveLength(0);
  });

  it('sends the interval in seconds, and nothing when it is empty', async () => {
    const f = fakeFetch({ 'POST /api/processes': [201, proc({ checkpointIntervalSeconds: 120 })] });
    vi.stubGlobal('fetch', f.fn);
    const onClose = vi.fn();
    const { unmount } = renderWithClient(<NewProcessDialog open onClose={onClose} servers={servers} />);
    await userEvent.type(screen.getByLabelText('Command'), 'sleep 60');
    await userEvent.type(screen.getByLabelText('Checkpoint every'), '2m');
    expect(screen.queryByTestId('checkpoint-interval-error')).toBeNull();
    await userEvent.click(screen.getByRole('button', { name: 'Start process' }));
    await waitFor(() => expect(onClose).toHaveBeenCalled());
    expect(JSON.parse(f.calls[0].body ?? '')).toEqual({ name: 'sleep', command: ['sleep', '60'], serverId: 'node0', engine: 'criu', checkpointIntervalSeconds: 120 });
    unmount();
    renderWithClient(<NewProcessDialog open onClose={() => {}} servers={servers} />);
    await userEvent.type(screen.getByLabelText('Command'), 'sleep 60');
    await userEvent.type(screen.getByLabelText('Checkpoint every'), '45');
    await userEvent.click(screen.getByRole('button', { name: 'Start process' }));
    await waitFor(() => expect(f.calls).toHaveLength(2));
    expect(JSON.parse(f.calls[1].body ?? '').checkpointIntervalSeconds).toBe(45);
  });

  it("shows the API's refusal of the interval inline", async () => {
    const f = fakeFetch({ 'POST /api/processes': [400, { error: { code: 'bad_request', message: 'checkpointIntervalSeconds needs the criu engine' } }] });
    vi.stubGlobal('fetch', f.fn);
    renderWithClient(<NewProcessDialog open onClose={() => {}} servers={servers} />);
    await userEvent.type(screen.getByLabelText('Command'), 'sleep 60');
    await userEvent.type(screen.getByLabelText('Checkpoint every'), '30s');
    await userEvent.click(screen.getByRole('button', { name: 'Start process' }));
    expect(await screen.findByTestId('new-process-error')).toHaveTextContent('checkpointIntervalSeconds needs the criu engine');
    expect(JSON.parse(f.calls[0].body ?? '').checkpointIntervalSeconds).toBe(30);
  });
});
