// Where each node's box goes in the topology drawing, and the edges between them.

export const CARD_W = 300;
export const GAP_X = 90;
export const GAP_Y = 110;
export const PAD_X = 24;
/** Room above the boxes for the arcs of migrations in flight (less when there are none). */
export const PAD_TOP = 78;
export const PAD_TOP_QUIET = 18;
export const HEADER_H = 92;
export const ROW_H = 28;
export const MAX_ROWS = 6;

export type Box = { id: string; x: number; y: number; w: number; h: number; col: number; row: number };

export function cardHeight(rows: number): number {
  const shown = Math.max(1, Math.min(rows, MAX_ROWS)) + (rows > MAX_ROWS ? 1 : 0);
  return HEADER_H + shown * ROW_H + 14;
}

/** Boxes in rows of at most `maxCols`; every box in a row is as tall as the tallest. */
export function layoutBoxes(nodes: { id: string; rows: number }[], maxCols = 3, padTop = PAD_TOP) {
  const cols = Math.max(1, Math.min(maxCols, nodes.length));
  const boxes: Box[] = [];
  let y = padTop;
  for (let start = 0, row = 0; start < nodes.length; start += cols, row += 1) {
    const slice = nodes.slice(start, start + cols);
    const h = Math.max(...slice.map((n) => cardHeight(n.rows)));
    slice.forEach((n, col) => {
      boxes.push({ id: n.id, x: PAD_X + col * (CARD_W + GAP_X), y, w: CARD_W, h, col, row });
    });
    y += h + GAP_Y;
  }
  const width = PAD_X * 2 + cols * CARD_W + (cols - 1) * GAP_X;
  const height = nodes.length ? y - GAP_Y + 24 : padTop + 24;
  return { boxes, width, height };
}

/**
 * An edge from one box to another: an arc over the top when both sit in one row, else a curve
 * between their facing sides. `lane` spreads several edges between the same boxes apart.
 */
export function edgePath(a: Box, b: Box, lane = 0): { d: string; labelX: number; labelY: number } {
  if (a.row === b.row) {
    const sx = a.x + a.w / 2 + (b.x > a.x ? 40 : -40);
    const tx = b.x + b.w / 2 + (b.x > a.x ? -40 : 40);
    const top = a.y;
    const lift = 46 + lane * 18 + Math.min(60, Math.abs(b.col - a.col) * 10);
    const cy = top - lift * 2 + 16;
    const labelY = top - lift + 8 - 8;
    return { d: `M ${sx} ${top} C ${sx} ${cy}, ${tx} ${cy}, ${tx} ${top - 4}`, labelX: (sx + tx) / 2, labelY };
  }
  const down = b.y > a.y;
  const sx = a.x + a.w / 2 + lane * 16;
  const sy = down ? a.y + a.h : a.y;
  const tx = b.x + b.w / 2 + lane * 16;
  const ty = down ? b.y - 4 : b.y + b.h + 4;
  const my = (sy + ty) / 2;
  return { d: `M ${sx} ${sy} C ${sx} ${my}, ${tx} ${my}, ${tx} ${ty}`, labelX: (sx + tx) / 2, labelY: my };
}

export function truncate(s: string, max: number): string {
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}
