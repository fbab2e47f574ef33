import { describe, expect, it } from 'vitest';
import { formatInterval, parseInterval } from './interval';

describe('parseInterval', () => {
  it('reads seconds, s, m and h; nothing means unprotected', () => {
    expect(parseInterval('')).toBeUndefined();
    expect(parseInterval('  ')).toBeUndefined();
    expect(parseInterval('45')).toBe(45);
    expect(parseInterval('30s')).toBe(30);
    expect(parseInterval('2m')).toBe(120);
    expect(parseInterval('2 M')).toBe(120);
    expect(parseInterval('24h')).toBe(86400);
  });

  it('refuses what the API would: outside 5 s to 24 h, fractions, other units', () => {
    for (const t of ['4', '4s', '0', '25h', '86401', '1.5m', '-5', '2d', 'soon']) expect(parseInterval(t)).toBeNull();
    expect(parseInterval('5')).toBe(5);
  });
});

describe('formatInterval', () => {
  it('uses the largest unit that divides it', () => {
    expect(formatInterval(30)).toBe('30s');
    expect(formatInterval(90)).toBe('90s');
    expect(formatInterval(120)).toBe('2m');
    expect(formatInterval(3600)).toBe('1h');
    expect(formatInterval(5400)).toBe('90m');
  });
});
