/**
 * The numbers the panel shows (costs, budgets, token counts), each by the rule
 * of its formatter in the kernel's `jupyter_llmchat/_core/_usage.py`: one
 * table of cases, tests/format_cases.json, is checked against both sides
 * (tests/test_format_cases.py runs this module in node). No locale: the
 * kernel's views and the panel group digits the same way, with commas.
 */

/** Digits grouped in threes with commas: `1234567` reads `1,234,567`. */
function thousands(digits: string): string {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

/**
 * A cost in US dollars (`format_cost`): unknown is `n/a`, free `$0`, from $1
 * up cents with thousands separated, below $1 two significant digits.
 */
export function formatCost(usd: number | null | undefined): string {
  if (usd === null || usd === undefined || !Number.isFinite(usd)) {
    return 'n/a';
  }
  if (usd === 0) {
    return '$0';
  }
  const sign = usd < 0 ? '-' : '';
  const v = Math.abs(usd);
  if (v >= 1) {
    const [whole, frac] = v.toFixed(2).split('.');
    return `${sign}$${thousands(whole)}.${frac}`;
  }
  const decimals = Math.max(2, 1 - Math.floor(Math.log10(v)));
  return `${sign}$${v.toFixed(decimals)}`;
}

/**
 * A cost as the views show it: `format_row_cost(usd, free=...)` in `_usage.py`.
 * The bundled local model's answers are known to be free: "$0, local", told
 * apart from an unknown price ("n/a") and from a priced model's "$0".
 */
export function formatRowCost(
  usd: number | null | undefined,
  free: boolean
): string {
  if (free && !usd) {
    return '$0, local';
  }
  return formatCost(usd);
}

/** `x` as a plain decimal (never an exponent), with the digits of `String(x)`. */
function plainDecimal(x: number): string {
  const [mantissa, exp] = String(Math.abs(x)).split('e');
  const sign = x < 0 ? '-' : '';
  if (exp === undefined) {
    return sign + mantissa;
  }
  const [whole, frac = ''] = mantissa.split('.');
  const digits = whole + frac;
  const point = whole.length + Number(exp);
  if (point <= 0) {
    return `${sign}0.${'0'.repeat(-point)}${digits}`;
  }
  if (point >= digits.length) {
    return sign + digits + '0'.repeat(point - digits.length);
  }
  return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
}

/**
 * A budget the user set, as set (`format_limit`): exact, where a cost is
 * rounded to two significant digits (a limit of $0.00125 is not "$0.0013").
 * Cents at least, thousands separated.
 */
export function formatLimit(usd: number): string {
  const cents = usd.toFixed(2);
  if (Number(cents) === usd || !Number.isFinite(usd)) {
    const [whole, frac] = cents.split('.');
    return `$${thousands(whole)}${frac === undefined ? '' : '.' + frac}`;
  }
  const [whole, frac = ''] = plainDecimal(usd).split('.');
  return `$${thousands(whole)}.${frac.padEnd(2, '0')}`;
}

/**
 * A (total) token count (`format_tokens`): `n/a` unknown, thousands
 * separated, `+` when `unknown` answers did not report theirs.
 */
export function formatCount(
  n: number | null | undefined,
  unknown = 0
): string {
  if (n === null || n === undefined) {
    return 'n/a';
  }
  return thousands(String(n)) + (unknown ? '+' : '');
}
