import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen } from '@testing-library/react';
import { fakeFetch, proc } from '@/test/fixtures';
import { renderWithClient } from '@/test/render';
import { ProcessOutput } from './process-output';

afterEach(() => vi.unstubAllGlobals());

describe('ProcessOutput', () => {
  it("names the process's own address, or a dash on the node's network", async () => {
    vi.stubGlobal('fetch', fakeFetch({ 'GET /api/processes/w-1/logs': [200, { lines: [], next: 0 }] }).fn);
    const { unmount } = renderWithClient(<ProcessOutput process={proc({ status: 'exited', address: '10.231.254.130' })} onClose={() => {}} />);
    expect(screen.getByTestId('process-output-address')).toHaveTextContent('10.231.254.130');
    expect(await screen.findByText('No output yet.')).toBeInTheDocument();
    unmount();
    renderWithClient(<ProcessOutput process={proc({ status: 'exited' })} onClose={() => {}} />);
    expect(screen.getByTestId('process-output-address')).toHaveTextContent('—');
  });
});
