import { describe, expect, it } from 'vitest';
import { CARD_W, GAP_X, PAD_TOP, PAD_X, cardHeight, edgePath, layoutBoxes, truncate } from './layout';

describe('topology layout', () => {
  it('puts at most three boxes in a row, each row as tall as its tallest box', () => {
    const { boxes, width } = layoutBoxes([
      { id: 'a', rows: 1 },
      { id: 'b', rows: 4 },
      { id: 'c', rows: 0 },
      { id: 'd', rows: 2 },
    ]);
    expect(boxes.map((b) => [b.id, b.row, b.col])).toEqual([
      ['a', 0, 0],
      ['b', 0, 1],
      ['c', 0, 2],
      ['d', 1, 0],
    ]);
    expect(boxes[0].h).toBe(cardHeight(4));
    expect(boxes[3].y).toBeGreaterThan(boxes[0].y + boxes[0].h);
    expect(width).toBe(PAD_X * 2 + 3 * CARD_W + 2 * GAP_X);
    expect(boxes[0].y).toBe(PAD_TOP);
  });

  it('routes an edge over the top within a row and between sides across rows', () => {
    const { boxes } = layoutBoxes(['a', 'b', 'c', 'd'].map((id) => ({ id, rows: 1 })));
    const over = edgePath(boxes[0], boxes[1]);
    expect(over.labelY).toBeLessThan(boxes[0].y);
    const across = edgePath(boxes[0], boxes[3]);
    expect(across.labelY).toBeGreaterThan(boxes[0].y + boxes[0].h);
  });

  it('truncates long names', () => {
    expect(truncate('short', 10)).toBe('short');
    expect(truncate('a-very-long-process-name', 10)).toBe('a-very-lo…');
  });
});
