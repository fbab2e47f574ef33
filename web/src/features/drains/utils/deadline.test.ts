import { describe, expect, it } from 'vitest';
import { parseDeadline } from './deadline';

describe('parseDeadline', () => {
  it('reads seconds, minutes and hours, and nothing as no deadline', () => {
    expect(parseDeadline('90')).toBe(90);
    expect(parseDeadline('90s')).toBe(90);
    expect(parseDeadline(' 2m ')).toBe(120);
    expect(parseDeadline('1h')).toBe(3600);
    expect(parseDeadline('')).toBeUndefined();
  });

  it('refuses what the API would refuse', () => {
    for (const bad of ['0', '2x', '-5', '1.5m', '25h', 'soon']) expect(parseDeadline(bad)).toBeNull();
  });
});
