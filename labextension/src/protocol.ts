/**
 * Messages on the `jupyter_llmchat` comm and the record kept in the notebook's
 * metadata (DESIGN §6-7). The kernel owns the record's schema; the front end
 * checks only enough to refuse what is plainly not a record.
 */
import type { JSONArray, JSONObject, JSONValue } from '@lumino/coreutils';

export const RECORD_VERSION = 1;

/** `notebook.metadata.jupyter_llmchat`. */
export type ChatRecord = JSONObject & { readonly version: typeof RECORD_VERSION };

/** Front end -> kernel, in answer to the kernel opening the comm. */
export type HelloMessage = {
  type: 'hello';
  /** Notebook path relative to the server root. */
  path: string;
  /** False when the notebook has unsaved changes. */
  saved: boolean;
  /** The in-memory record, which may hold turns not saved yet. */
  record: JSONObject | null;
};

/** Front end -> kernel: an update did not apply; send the whole record. */
export type ResyncMessage = {
  type: 'resync';
  path: string;
};

/**
 * Front end -> kernel: the notebook was renamed or moved while open, from
 * `from` (the path it said hello with) to `path`. The record follows it.
 */
export type PathMessage = {
  type: 'path';
  path: string;
  from: string;
};

/**
 * Front end -> kernel: the notebook's cell ids in order, when cells move, are
 * added or deleted (debounced), and after the hello (DESIGN §10).
 */
export type OrderMessage = {
  type: 'order';
  path: string;
  cells: string[];
};

/**
 * Kernel -> front end: replace the record (null deletes it). Every message
 * from the kernel carries `path`, the one its notebook said hello with.
 */
export type SetMetadataMessage = {
  type: 'set_metadata';
  path: string;
  value: ChatRecord | null;
};

/**
 * Kernel -> front end after a turn: the session's turns from index `from`
 * on, to apply only onto a record whose session holds exactly `from` turns
 * (a missing session when `from` is 0); the whole ledger as `usage`.
 */
export type AppendTurnsMessage = JSONObject & {
  type: 'append_turns';
  path: string;
  session: string;
  from: number;
  turns: JSONArray;
  provider: JSONValue;
  system_prompt: string | null;
  usage: JSONArray;
};

export function isAppendTurns(value: unknown): value is AppendTurnsMessage {
  return (
    isPlainObject(value) &&
    value.type === 'append_turns' &&
    typeof value.session === 'string' &&
    typeof value.from === 'number' &&
    Number.isInteger(value.from) &&
    value.from >= 0 &&
    Array.isArray(value.turns) &&
    Array.isArray(value.usage) &&
    (value.system_prompt === null || typeof value.system_prompt === 'string')
  );
}

/**
 * Kernel -> front end after a cell run again: `turns` take the place of the
 * session's turns `start` to `end`, only on a record whose session holds
 * exactly `length` turns.
 */
export type ReplaceExchangeMessage = JSONObject & {
  type: 'replace_exchange';
  path: string;
  session: string;
  start: number;
  end: number;
  length: number;
  turns: JSONArray;
  provider: JSONValue;
  system_prompt: string | null;
  usage: JSONArray;
};

function isIndex(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0;
}

export function isReplaceExchange(
  value: unknown
): value is ReplaceExchangeMessage {
  return (
    isPlainObject(value) &&
    value.type === 'replace_exchange' &&
    typeof value.session === 'string' &&
    isIndex(value.start) &&
    isIndex(value.end) &&
    isIndex(value.length) &&
    value.start <= value.end &&
    value.end <= value.length &&
    Array.isArray(value.turns) &&
    Array.isArray(value.usage) &&
    (value.system_prompt === null || typeof value.system_prompt === 'string')
  );
}

/**
 * Kernel -> front end: the cells whose recorded answer was made on another
 * conversation above them than the one they have now (shown with a badge).
 */
export type StaleMessage = {
  type: 'stale';
  path: string;
  cells: string[];
};

export function staleCells(value: unknown): string[] | null {
  if (!isPlainObject(value) || value.type !== 'stale' || !Array.isArray(value.cells)) {
    return null;
  }
  return value.cells.filter((c): c is string => typeof c === 'string');
}

/**
 * Kernel -> front end (`%%chat --insert`): put `source` into the code cell
 * below cell `cell` that was inserted for it, else into a new one below it.
 */
export type InsertCellMessage = JSONObject & {
  type: 'insert_cell';
  path: string;
  cell: string;
  source: string;
};

export function isInsertCell(value: unknown): value is InsertCellMessage {
  return (
    isPlainObject(value) &&
    value.type === 'insert_cell' &&
    typeof value.cell === 'string' &&
    typeof value.source === 'string'
  );
}

export function isPlainObject(value: unknown): value is JSONObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function isChatRecord(value: unknown): value is ChatRecord {
  return (
    isPlainObject(value) &&
    value.version === RECORD_VERSION &&
    (value.sessions === undefined || isPlainObject(value.sessions)) &&
    (value.usage === undefined || Array.isArray(value.usage))
  );
}
