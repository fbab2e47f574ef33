// Splits one command line into argv the way a POSIX shell would for plain words and quotes
// (no expansion, no globbing, no operators): the API takes the program and its arguments.

export type SplitResult = { ok: true; argv: string[] } | { ok: false; error: string; argv: string[] };

export function splitArgv(line: string): SplitResult {
  const argv: string[] = [];
  let word = '';
  let inWord = false;
  let quote: "'" | '"' | null = null;

  for (let i = 0; i < line.length; i += 1) {
    const c = line[i];
    if (quote === "'") {
      if (c === "'") quote = null;
      else word += c;
      continue;
    }
    if (quote === '"') {
      if (c === '"') {
        quote = null;
      } else if (c === '\\' && i + 1 < line.length && '"\\$`\n'.includes(line[i + 1])) {
        i += 1;
        if (line[i] !== '\n') word += line[i];
      } else {
        word += c;
      }
      continue;
    }
    if (c === "'" || c === '"') {
      quote = c;
      inWord = true;
    } else if (c === '\\') {
      if (i + 1 < line.length) {
        i += 1;
        // A backslash-newline joins lines.
        if (line[i] !== '\n') {
          word += line[i];
          inWord = true;
        }
      } else {
        word += c;
        inWord = true;
      }
    } else if (c === ' ' || c === '\t' || c === '\n' || c === '\r') {
      if (inWord) {
        argv.push(word);
        word = '';
        inWord = false;
      }
    } else {
      word += c;
      inWord = true;
    }
  }
  if (quote) {
    if (inWord) argv.push(word);
    return { ok: false, error: `Unterminated ${quote === '"' ? 'double' : 'single'} quote.`, argv };
  }
  if (inWord) argv.push(word);
  return { ok: true, argv };
}

/** The inverse, for showing argv as one line: words quoted only where needed. */
export function joinArgv(argv: string[]): string {
  return argv
    .map((a) => (a === '' ? "''" : /^[A-Za-z0-9_@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`))
    .join(' ');
}
