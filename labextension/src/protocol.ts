/**
 * Messages on the `jupyter_llmchat` comm and the record kept in the notebook's
 * metadata (DESIGN §6-7). The kernel owns the record's schema; the front end
 * checks only enough to refuse what is plainly not a record.
 */
import type { JSONObject } from '@lumino/coreutils';

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

/** Kernel -> front end: replace the record (null deletes it). */
export type SetMetadataMessage = {
  type: 'set_metadata';
  value: ChatRecord | null;
};

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
