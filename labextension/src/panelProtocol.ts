/**
 * Custom messages of the chat panel widget (`ChatPanel` in the kernel's
 * `jupyter_llmchat/_widget.py`, whose docstring is the reference). The
 * conversation travels as these messages; state that changes rarely is synced
 * as traits (`session`, `sessions`, `busy`, `model`, `usage`).
 */

/** Token counts of an answer; null where the server did not say. */
export interface ITokens {
  input: number | null;
  output: number | null;
  cached: number | null;
}

/** A tool call of an answer: shown as one line, opening on its arguments and result. */
export interface IToolCall {
  id: string;
  name: string;
  /** The arguments, shortened for the line. */
  args: string;
  /** The full arguments, as indented JSON. */
  arguments: string;
  /**
   * `refused`: not run (a callback or the approval said no; `result` says why).
   * `stopped`: the answer was stopped while it ran; a late result is discarded.
   */
  state: 'running' | 'ok' | 'refused' | 'error' | 'stopped';
  result?: string | null;
  seconds?: number | null;
  /** The tool approval asks: Approve / Deny on the line (front end only, until answered). */
  asking?: boolean;
}

/** One turn as the kernel describes it. */
export interface ITurnMessage {
  id: string;
  role: 'user' | 'assistant';
  /** Null in `done`: the deltas carried the text. */
  text?: string | null;
  thinking?: string | null;
  partial?: boolean;
  source?: 'cell' | 'panel' | null;
  model?: string | null;
  /** Seconds since the epoch. */
  time?: number;
  tokens?: ITokens | null;
  cost_usd?: number | null;
  /** The session is on the bundled model: a cost of 0 shows as "$0, local". */
  free?: boolean;
  finish_reason?: string | null;
  /** The tool calls this answer asked for, with their results. */
  tools?: IToolCall[] | null;
}

/** `usage` trait: the session's totals. */
export interface IUsage {
  answers?: number;
  input?: number | null;
  output?: number | null;
  cached?: number | null;
  cost_usd?: number | null;
  /** The session is on the bundled model: a cost of 0 shows as "$0, local". */
  free?: boolean;
  /** The notebook's budget (%chat_budget) and what is left; absent without one. */
  budget_usd?: number | null;
  left_usd?: number | null;
  budget_tokens?: number | null;
  left_tokens?: number | null;
}

/** Kernel -> front end. */
export type KernelPanelMessage =
  /**
   * The latest whole exchanges of the session's history; `earlier`: how many
   * messages are before them; `cursor`: what `history_page` sends as `before`
   * for the page before them (null when nothing is earlier).
   */
  | {
      type: 'history';
      messages: ITurnMessage[];
      earlier?: number;
      cursor?: string | null;
    }
  /** The page before `before` (a cursor of the last `history` or `history_page`). */
  | {
      type: 'history_page';
      before: string;
      messages: ITurnMessage[];
      earlier?: number;
      cursor?: string | null;
    }
  | { type: 'append'; messages: ITurnMessage[] }
  | { type: 'user'; message: ITurnMessage }
  | { type: 'delta'; id: string; kind: 'text' | 'thinking'; text: string }
  | { type: 'tool'; id: string; call: IToolCall }
  /** The tool approval asks about call `call_id` of answer `id`: Approve / Deny on its line. */
  | { type: 'approve'; id: string; call_id: string }
  | {
      type: 'done';
      message: ITurnMessage;
      user_id?: string;
      /** False: the question did not enter history. */
      recorded?: boolean;
    }
  | {
      type: 'error';
      message: string;
      hint?: string;
      /** Set in answer to `send`: false when the question did not enter history. */
      recorded?: boolean;
      /** The ids of the answer and the question, once the kernel accepted it. */
      id?: string;
      user_id?: string;
    }
  | { type: 'status'; text: string }
  /** A quiet line kept until the next question (attachments, old turns left out). */
  | { type: 'notice'; text: string }
  /** The kernel's top-level variable names, for `@name` completion. */
  | { type: 'names'; names: string[] }
  /** The server's models (`/models`); `error` set when it could not say. */
  | { type: 'models'; models: string[]; error?: string };

/** Front end -> kernel. */
export type FrontEndPanelMessage =
  | { type: 'hello' }
  /** The page of the history before the cursor `before` (the user scrolled up). */
  | { type: 'history_page'; before: string }
  /** `id`: the question's bubble in the page; the kernel answers under it (`user_id`). */
  | { type: 'send'; text: string; id?: string }
  | { type: 'stop' }
  | { type: 'session'; name: string }
  | { type: 'names' }
  | { type: 'models' }
  | { type: 'model'; name: string }
  /** The user's answer to `approve`: `always` allows that tool for the kernel's life. */
  | { type: 'approval'; call_id: string; answer: ApprovalAnswer };

export type ApprovalAnswer = 'yes' | 'no' | 'always';

const KERNEL_TYPES: ReadonlySet<string> = new Set([
  'history',
  'history_page',
  'append',
  'user',
  'delta',
  'tool',
  'approve',
  'done',
  'error',
  'status',
  'notice',
  'names',
  'models'
]);

/** A shallow check: enough to dispatch on `type` without trusting the rest blindly. */
export function isKernelPanelMessage(
  value: unknown
): value is KernelPanelMessage {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return false;
  }
  const type = (value as { type?: unknown }).type;
  return typeof type === 'string' && KERNEL_TYPES.has(type);
}
