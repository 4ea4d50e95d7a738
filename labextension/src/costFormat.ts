/**
 * A cost in US dollars: the same rule as `format_cost` in the kernel's
 * `jupyter_llmchat/_usage.py` (its docstring states it; tests/test_markdown.py
 * checks both sides on one table of cases).
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
    return `${sign}$${whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',')}.${frac}`;
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
