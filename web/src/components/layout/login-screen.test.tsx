import { beforeEach, describe, expect, it } from 'vitest';
import { screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { renderWithClient } from '@/test/render';
import { connection } from '@/lib/connection';
import { TOKEN_KEY } from '@/lib/auth';
import { LoginScreen } from './login-screen';
import { GatewayBanner } from './gateway-banner';

beforeEach(() => connection.reset());

describe('LoginScreen', () => {
  it('stores the pasted token and leaves the login state', async () => {
    connection.setAuthRequired(true);
    renderWithClient(<LoginScreen />);
    expect(screen.getByText(/Paste the token/)).toHaveTextContent('ferry up');
    await userEvent.type(screen.getByLabelText('Token'), '  0123456789abcdef0123  ');
    await userEvent.click(screen.getByRole('button', { name: 'Sign in' }));
    expect(localStorage.getItem(TOKEN_KEY)).toBe('0123456789abcdef0123');
    expect(connection.get().authRequired).toBe(false);
    expect(connection.get().tokenVersion).toBe(1);
  });
});

describe('GatewayBanner', () => {
  it('shows while the gateway is unreachable and goes away when it is back', async () => {
    renderWithClient(<GatewayBanner />);
    expect(screen.queryByTestId('gateway-banner')).toBeNull();
    connection.setStreamDown(true);
    expect(await screen.findByTestId('gateway-banner')).toHaveTextContent(/unreachable/);
    connection.setStreamDown(false);
    await waitFor(() => expect(screen.queryByTestId('gateway-banner')).toBeNull());
  });
});
