import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ApiError, READ_ONLY_MESSAGE, api, errorMessage, extractApiError, query } from './api-client';
import { connection, gatewayUnreachable } from './connection';
import { eventsUrl, setToken, TOKEN_KEY } from './auth';
import { fakeFetch } from '@/test/fixtures';

describe('extractApiError', () => {
  it("takes the gateway's own code and message", () => {
    const e = extractApiError(400, '{"error":{"code":"bad_request","message":"command is empty"}}');
    expect(e).toBeInstanceOf(ApiError);
    expect(e.status).toBe(400);
    expect(e.code).toBe('bad_request');
    expect(e.message).toBe('command is empty');
  });

  it('says a 403 means a read-only token', () => {
    const e = extractApiError(403, '{"error":{"code":"forbidden","message":"POST /api/processes needs an operator token"}}');
    expect(e.message).toContain(READ_ONLY_MESSAGE);
    expect(extractApiError(403, '').message).toBe(READ_ONLY_MESSAGE);
  });

  it('summarises a body that is not an API error', () => {
    expect(extractApiError(502, '', 'Bad Gateway').message).toBe('HTTP 502 Bad Gateway');
    expect(extractApiError(500, 'proxy error').message).toBe('proxy error');
    expect(extractApiError(404, '{"other":1}').code).toBe('http_404');
  });

  it('gives words for anything thrown', () => {
    expect(errorMessage(new ApiError(409, 'conflict', 'already migrating'))).toBe('already migrating');
    expect(errorMessage(new Error('boom'))).toBe('boom');
    expect(errorMessage('text')).toBe('text');
    expect(errorMessage(undefined)).toBe('Something went wrong.');
  });
});

describe('request', () => {
  beforeEach(() => connection.reset());
  afterEach(() => vi.unstubAllGlobals());

  it('sends no Authorization header without a token, and a bearer token with one', async () => {
    const f = fakeFetch({ 'GET /api/overview': [200, { totalProcesses: 0 }] });
    vi.stubGlobal('fetch', f.fn);
    await api.get('/api/overview');
    expect(f.calls[0].headers.Authorization).toBeUndefined();
    setToken('secret-token-123');
    expect(localStorage.getItem(TOKEN_KEY)).toBe('secret-token-123');
    await api.get('/api/overview');
    expect(f.calls[1].headers.Authorization).toBe('Bearer secret-token-123');
  });

  it('puts the token in the event stream URL', () => {
    expect(eventsUrl(null)).toBe('/api/events');
    expect(eventsUrl('a b')).toBe('/api/events?token=a%20b');
  });

  it('sends JSON bodies', async () => {
    const f = fakeFetch({ 'POST /api/migrations': [202, { id: 'm-1' }] });
    vi.stubGlobal('fetch', f.fn);
    await api.post('/api/migrations', { processId: 'w-1', targetServerId: 'node1' });
    expect(f.calls[0].headers['Content-Type']).toBe('application/json');
    expect(JSON.parse(f.calls[0].body ?? '')).toEqual({ processId: 'w-1', targetServerId: 'node1' });
  });

  it('asks for a token on 401', async () => {
    vi.stubGlobal('fetch', fakeFetch({ 'GET /api/servers': [401, { error: { code: 'unauthorized', message: 'needs a token' } }] }).fn);
    await expect(api.get('/api/servers')).rejects.toMatchObject({ status: 401 });
    expect(connection.get().authRequired).toBe(true);
    expect(gatewayUnreachable(connection.get())).toBe(false);
  });

  it('marks the gateway unreachable when fetch fails, and reachable again after', async () => {
    vi.stubGlobal('fetch', () => Promise.reject(new TypeError('Failed to fetch')));
    await expect(api.get('/api/overview')).rejects.toMatchObject({ status: 0, code: 'unreachable' });
    expect(gatewayUnreachable(connection.get())).toBe(true);
    vi.stubGlobal('fetch', fakeFetch({ 'GET /api/overview': [200, {}] }).fn);
    await api.get('/api/overview');
    expect(gatewayUnreachable(connection.get())).toBe(false);
  });

  it("treats a proxy's 5xx page as an unreachable gateway, but not the gateway's own 500", async () => {
    vi.stubGlobal('fetch', async () => new Response('', { status: 502 }));
    await expect(api.get('/api/overview')).rejects.toMatchObject({ status: 0 });
    vi.stubGlobal('fetch', fakeFetch({ 'GET /api/overview': [500, { error: { code: 'internal', message: 'db failed' } }] }).fn);
    await expect(api.get('/api/overview')).rejects.toMatchObject({ status: 500, message: 'db failed' });
    expect(connection.get().fetchDown).toBe(false);
  });
});

describe('query', () => {
  it('keeps only the values given', () => {
    expect(query({ process: 'w-1', level: '', limit: 200, x: undefined })).toBe('?process=w-1&limit=200');
    expect(query({})).toBe('');
  });
});
