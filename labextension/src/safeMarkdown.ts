/**
 * Model text (and restored records) as Markdown that is safe to render
 * (DESIGN §9): a port of `jupyter_llmchat/_markdown.py`, whose docstring is
 * the reference. Keep the two in step; tests/test_markdown.py checks the same
 * cases on both sides.
 *
 * The panel renders through JupyterLab's sanitizing rendermime, which removes
 * scripts and event handlers but keeps `<img src>`: so images become links
 * here, before rendering, as they do in cells.
 */

const FENCE_OPEN = /^(`{3,}|~{3,})/;
const FENCE_CLOSE = /^ {0,3}(`{3,}|~{3,})[ \t]*(?:\r\n|\r|\n)?$/;
const DANGEROUS = ['javascript:', 'vbscript:', 'data:'];
const SCHEME = /(?<![A-Za-z0-9+.-])(javascript|vbscript|data)(\\?:)(?=\S)/gi;
const WORD_JOINER = '\u2060';
const PLACEHOLDER = /\u0000(\d+)\u0000/g;

/** Split into lines, each keeping its line ending (as Python's splitlines(keepends=True)). */
function splitLines(text: string): string[] {
  return text.match(/[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$/g) ?? [];
}

/** `text` as Markdown that shows HTML as text, loads no image and has no script link. */
export function safeMarkdown(text: string): string {
  text = text.replace(/\u0000/g, '\ufffd');
  const out: string[] = [];
  const block: string[] = [];
  let fence: string | null = null;
  for (const line of splitLines(text)) {
    if (fence !== null) {
      out.push(line);
      const m = FENCE_CLOSE.exec(line);
      if (m && m[1][0] === fence[0] && m[1].length >= fence.length) {
        fence = null;
      }
      continue;
    }
    const m = FENCE_OPEN.exec(line);
    if (m && !(m[1][0] === '`' && line.slice(m[0].length).includes('`'))) {
      out.push(safeBlock(block.join('')));
      block.length = 0;
      fence = m[1];
      out.push(line);
      continue;
    }
    block.push(line);
  }
  out.push(safeBlock(block.join('')));
  if (fence !== null) {
    out.push((/[\n\r]$/.test(text) ? '' : '\n') + fence);
  }
  return out.join('');
}

function safeBlock(block: string): string {
  if (!block) {
    return '';
  }
  const spans: string[] = [];
  const keep = (code: string): string => {
    spans.push(code);
    return `\u0000${spans.length - 1}\u0000`;
  };
  const lines = splitLines(block).map(line => hideCodeSpans(line, keep));
  let safe = inline(lines.join(''));
  // Whatever "![" is left (reference images) loses its image: "!" escaped, unless it is already.
  safe = safe.replace(/(?<!\\)((?:\\\\)*)!\[/g, '$1\\![');
  return safe.replace(PLACEHOLDER, (_, i: string) => spans[Number(i)]);
}

function hideCodeSpans(line: string, keep: (code: string) => string): string {
  const out: string[] = [];
  const ticks = /`+/g;
  let pos = 0;
  let m: RegExpExecArray | null;
  ticks.lastIndex = 0;
  while ((m = ticks.exec(line)) !== null) {
    const start = m.index;
    const end = start + m[0].length;
    let closeStart = -1;
    let closeEnd = -1;
    if (start === 0 || line[start - 1] !== '\\') {
      const close = new RegExp('(?<!`)' + m[0] + '(?!`)', 'g');
      close.lastIndex = end;
      const c = close.exec(line);
      if (c !== null) {
        closeStart = c.index;
        closeEnd = c.index + c[0].length;
      }
    }
    // A "|" inside could be a table's cell border, which GFM splits on before code spans.
    if (closeStart !== -1 && !line.slice(end, closeStart).includes('|')) {
      out.push(line.slice(pos, start) + keep(line.slice(start, closeEnd)));
      pos = closeEnd;
    } else {
      out.push(line.slice(pos, end));
      pos = end;
    }
    ticks.lastIndex = pos;
  }
  out.push(line.slice(pos));
  return out.join('');
}

function inline(s: string): string {
  const out: string[] = [];
  const n = s.length;
  let i = 0;
  let start = 0;
  while (i < n) {
    const ch = s[i];
    if (ch === '\\' && i + 1 < n) {
      i += 2;
      continue;
    }
    if (ch !== '[') {
      i += 1;
      continue;
    }
    const close = matchingBracket(s, i);
    const link = close === null ? null : destination(s, close + 1);
    if (close === null || link === null) {
      i += 1;
      continue;
    }
    const [dest, end] = link;
    const image = i > 0 && s[i - 1] === '!' && !escaped(s, i - 1);
    out.push(escape(s.slice(start, image ? i - 1 : i)));
    const label = inline(s.slice(i + 1, close));
    if (isDangerous(dest)) {
      out.push(label);
    } else if (image) {
      out.push(`[${label || 'image'}](${encode(dest)}) (${literal(dest)})`);
    } else {
      out.push(`[${label}](${encode(dest)})`);
    }
    i = start = end;
  }
  out.push(escape(s.slice(start)));
  return out.join('');
}

function escaped(s: string, i: number): boolean {
  let k = i;
  while (k > 0 && s[k - 1] === '\\') {
    k -= 1;
  }
  return (i - k) % 2 === 1;
}

function matchingBracket(s: string, i: number): number | null {
  let depth = 0;
  let k = i;
  while (k < s.length) {
    const c = s[k];
    if (c === '\\') {
      k += 2;
      continue;
    }
    if (c === '[') {
      depth += 1;
    } else if (c === ']') {
      depth -= 1;
      if (depth === 0) {
        return k;
      }
    }
    k += 1;
  }
  return null;
}

function destination(s: string, k: number): [string, number] | null {
  const n = s.length;
  if (k >= n || s[k] !== '(') {
    return null;
  }
  k = skipSpace(s, k + 1);
  let dest: string;
  if (k < n && s[k] === '<') {
    let end = k + 1;
    while (end < n && !'<>\n'.includes(s[end])) {
      end += s[end] === '\\' ? 2 : 1;
    }
    if (end >= n || s[end] !== '>') {
      return null;
    }
    dest = s.slice(k + 1, end);
    k = end + 1;
  } else {
    const begin = k;
    let depth = 0;
    while (k < n) {
      const c = s[k];
      if (c === '\\' && k + 1 < n) {
        k += 2;
        continue;
      }
      // CommonMark: no space or control in a destination.
      if (c.charCodeAt(0) <= 0x20) {
        break;
      }
      if (c === '(') {
        depth += 1;
      } else if (c === ')') {
        if (depth === 0) {
          break;
        }
        depth -= 1;
      }
      k += 1;
    }
    dest = s.slice(begin, k);
  }
  k = skipSpace(s, k);
  if (k < n && '"\'('.includes(s[k])) {
    const closer = s[k] === '(' ? ')' : s[k];
    k += 1;
    while (k < n && s[k] !== closer) {
      k += s[k] === '\\' ? 2 : 1;
    }
    if (k >= n) {
      return null;
    }
    k = skipSpace(s, k + 1);
  }
  if (k >= n || s[k] !== ')') {
    return null;
  }
  return [dest, k + 1];
}

function skipSpace(s: string, k: number): number {
  let newline = false;
  while (k < s.length && ' \t\n\r'.includes(s[k])) {
    if (s[k] === '\n' || s[k] === '\r') {
      if (newline) {
        break;
      }
      newline = true;
    }
    k += 1;
  }
  return k;
}

function isDangerous(dest: string): boolean {
  // What a browser would read: backslash escapes undone, blanks and controls dropped.
  const url = Array.from(dest.replace(/\\(.)/gs, '$1'))
    .filter(c => c.charCodeAt(0) > 0x20)
    .join('')
    .toLowerCase();
  return DANGEROUS.some(scheme => url.startsWith(scheme));
}

function breakSchemes(s: string): string {
  return s.replace(
    SCHEME,
    (_, name: string, colon: string) => name + WORD_JOINER + colon
  );
}

function encode(dest: string): string {
  dest = dest
    .replace(/[\u0000-\u0020]/g, '')
    .replace(/&/g, '&amp;')
    .replace(/</g, '%3C')
    .replace(/>/g, '%3E')
    .replace(/\(/g, '%28')
    .replace(/\)/g, '%29');
  return breakSchemes(dest);
}

function literal(s: string): string {
  return s
    .replace(/[\u0000-\u0020]+/g, ' ')
    .replace(/([\\`*_[\]()!#|~>])/g, '\\$1')
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;');
}

function escape(s: string): string {
  return breakSchemes(s.replace(/&/g, '&amp;').replace(/</g, '&lt;'));
}
