/**
 * What the chat panel adds around a message: the answer's thinking (folded)
 * and its tool calls (one line each, opening on arguments and result) above it, and below it where the turn came from, a "(partial)" mark, and the
 * answer's tokens and cost.
 */
import type {
  MessageFooterSectionProps,
  MessagePreambleProps
} from '@jupyter/chat';
import { MessageFooterRegistry, MessagePreambleRegistry } from '@jupyter/chat';
import * as React from 'react';

import { formatCount, formatRowCost } from './costFormat';
import type { ITurnInfo } from './panelChatModel';
import type { ApprovalAnswer } from './panelProtocol';
import { KernelChatModel, turnInfo } from './panelChatModel';

/** `in 11 / out 200`, with `n/a` for what the server did not report. */
export function formatTokens(
  input: number | null | undefined,
  output: number | null | undefined
): string {
  return `in ${formatCount(input)} / out ${formatCount(output)}`;
}

function Thinking(props: MessagePreambleProps): JSX.Element | null {
  const info = turnInfo(props.message);
  if (info === null || !info.thinking) {
    return null;
  }
  return (
    <details className="jp-llmchat-thinking">
      <summary>Thinking</summary>
      <div className="jp-llmchat-thinking-text">{info.thinking}</div>
    </details>
  );
}

/** `3.2 s`, `0.15 s`: a call's time on its line. */
export function formatSeconds(s: number | null | undefined): string {
  return s === null || s === undefined ? '' : ` · ${s.toFixed(2)} s`;
}

/** A call's state on its line. */
function callState(state: string): string {
  switch (state) {
    case 'running':
      return 'running…';
    case 'stopped':
      return 'stopped (abandoned; a late result is discarded)';
    default:
      return state;
  }
}

/**
 * One line per tool call: name, short arguments, ok / refused / error /
 * running, time.
 * Everything in it comes from the model or the tool (DESIGN §9), so it is
 * rendered as React text (escaped), never as HTML or Markdown.
 */
function ToolCalls(props: MessagePreambleProps): JSX.Element | null {
  const info = turnInfo(props.message);
  if (info === null || !info.tools || info.tools.length === 0) {
    return null;
  }
  const { model, message } = props;
  return (
    <div className="jp-llmchat-tools">
      {info.tools.map(call => (
        <React.Fragment key={call.id}>
          <details
            className={`jp-llmchat-tool jp-llmchat-tool-${call.state}`}
          >
            <summary>
              {'🔧 '}
              <code>{call.name}</code>
              {`(${call.args}) — ${callState(call.state)}${formatSeconds(call.seconds)}`}
            </summary>
            <div className="jp-llmchat-tool-label">Arguments</div>
            <pre className="jp-llmchat-tool-arguments">{call.arguments}</pre>
            {call.result !== null && call.result !== undefined ? (
              <>
                <div className="jp-llmchat-tool-label">
                  {call.state === 'error'
                    ? 'Error'
                    : call.state === 'refused'
                      ? 'Refused'
                      : 'Result'}
                </div>
                <pre className="jp-llmchat-tool-result">{call.result}</pre>
              </>
            ) : null}
          </details>
          {call.asking && model instanceof KernelChatModel ? (
            <Approval model={model} answerId={message.id} callId={call.id} />
          ) : null}
        </React.Fragment>
      ))}
    </div>
  );
}

/** The tool approval asks about a call: Approve (once or always) / Deny under its line. */
function Approval(props: {
  model: KernelChatModel;
  answerId: string;
  callId: string;
}): JSX.Element {
  const { model, answerId, callId } = props;
  const button = (answer: ApprovalAnswer, label: string, title: string) => (
    <button
      type="button"
      className={`jp-llmchat-approval-${answer}`}
      title={title}
      onClick={() => model.approve(answerId, callId, answer)}
    >
      {label}
    </button>
  );
  return (
    <div
      className="jp-llmchat-approval"
      role="group"
      aria-label="Approve this tool call?"
    >
      <span className="jp-llmchat-approval-text">Run this tool call?</span>
      {button('yes', 'Approve', 'Run this call')}
      {button('always', 'Always', 'Run this tool without asking, for this kernel')}
      {button('no', 'Deny', 'Refuse this call: the model is told it was refused')}
    </div>
  );
}

/** A question still in the page: "waiting for the kernel…" and its Cancel button. */
function Queued(props: {
  model: MessageFooterSectionProps['model'];
  id: string;
}): JSX.Element {
  const { model, id } = props;
  return (
    <span className="jp-llmchat-queued" role="status">
      <span
        className="jp-llmchat-queued-text"
        title="A comm message reaches the kernel only between cells: this question goes out when the kernel is idle."
      >
        waiting for the kernel…
      </span>
      <button
        type="button"
        className="jp-llmchat-cancel"
        aria-label="Cancel this question (it was not sent)"
        title="Cancel this question (it was not sent)"
        onClick={() => {
          if (model instanceof KernelChatModel) {
            model.cancel(id);
          }
        }}
      >
        Cancel
      </button>
    </span>
  );
}

function Origin(props: MessageFooterSectionProps): JSX.Element | null {
  const info = turnInfo(props.message);
  if (info === null) {
    return null;
  }
  const marks: JSX.Element[] = [];
  if (info.queued) {
    marks.push(
      <Queued key="queued" model={props.model} id={props.message.id} />
    );
  }
  if (info.partial) {
    marks.push(
      <span
        key="partial"
        className="jp-llmchat-partial"
        title="The answer was cut short (stopped, interrupted or a broken stream); history keeps what arrived."
      >
        (partial)
      </span>
    );
  }
  if (info.role === 'user' && info.source === 'cell') {
    marks.push(
      <span key="cell" className="jp-llmchat-origin">
        from a %%chat cell
      </span>
    );
  }
  return marks.length ? <div className="jp-llmchat-marks">{marks}</div> : null;
}

function Usage(props: MessageFooterSectionProps): JSX.Element | null {
  const info: ITurnInfo | null = turnInfo(props.message);
  if (
    info === null ||
    info.role !== 'assistant' ||
    info.streaming ||
    !info.tokens
  ) {
    return null;
  }
  const text = `${formatTokens(info.tokens.input, info.tokens.output)} · cost ${formatRowCost(info.costUsd, info.free)}`;
  return (
    <div
      className="jp-llmchat-turn-usage"
      title="Tokens and cost of this answer"
    >
      {text}
    </div>
  );
}

export function createPreambleRegistry(): MessagePreambleRegistry {
  const registry = new MessagePreambleRegistry();
  registry.addComponent(Thinking);
  registry.addComponent(ToolCalls);
  return registry;
}

export function createFooterRegistry(): MessageFooterRegistry {
  const registry = new MessageFooterRegistry();
  registry.addSection({ component: Origin, position: 'left' });
  registry.addSection({ component: Usage, position: 'right' });
  return registry;
}
