import { describe, expect, it } from 'vitest';
import { joinArgv, splitArgv } from './argv';

const ok = (line: string) => {
  const r = splitArgv(line);
  expect(r.ok).toBe(true);
  return r.argv;
};

describe('splitArgv', () => {
  it('splits on whitespace', () => {
    expect(ok('sleep   600')).toEqual(['sleep', '600']);
    expect(ok('  \tsleep\n60 ')).toEqual(['sleep', '60']);
    expect(ok('')).toEqual([]);
  });

  it('keeps single-quoted text literally', () => {
    expect(ok(`sh -c 'i=0; while :; do i=$((i+1)); echo $i; sleep 1; done'`)).toEqual([
      'sh',
      '-c',
      'i=0; while :; do i=$((i+1)); echo $i; sleep 1; done',
    ]);
    expect(ok(`echo 'a \\ b'`)).toEqual(['echo', 'a \\ b']);
  });

  it('handles double quotes and their escapes', () => {
    expect(ok(`echo "hello world" "say \\"hi\\"" "a\\b"`)).toEqual(['echo', 'hello world', 'say "hi"', 'a\\b']);
  });

  it('joins adjacent quoted and bare parts into one word', () => {
    expect(ok(`--name="my app"x 'a'"b"c`)).toEqual(['--name=my appx', 'abc']);
  });

  it('keeps empty quoted words', () => {
    expect(ok(`printf '' ""`)).toEqual(['printf', '', '']);
  });

  it('escapes outside quotes', () => {
    expect(ok(`echo a\\ b \\'q`)).toEqual(['echo', 'a b', "'q"]);
  });

  it('reports an unterminated quote', () => {
    const r = splitArgv(`sh -c 'echo hi`);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error).toMatch(/single quote/);
    expect(r.argv).toEqual(['sh', '-c', 'echo hi']);
    const d = splitArgv(`echo "x`);
    expect(d.ok).toBe(false);
    if (!d.ok) expect(d.error).toMatch(/double quote/);
  });

  it('round-trips through joinArgv', () => {
    const argv = ['sh', '-c', "it's a $test", '', 'plain'];
    expect(ok(joinArgv(argv))).toEqual(argv);
  });
});
