/**
 * The @jupyter/chat model of a chat panel: it turns the kernel widget's custom
 * messages into chat messages and sends the user's questions back.
 *
 * An answer streams as deltas (appended text); each delta re-adds the message
 * under the same id, which replaces it, so only the browser re-renders the
 * growing Markdown, never the wire.
 *
 * A question shows at once, under an id of the page's own. A comm message
 * reaches the kernel only between cells, so while the kernel runs a cell (or
 * the panel is answering) the question waits here, queued, marked "waiting
 * for the kernel…", and goes out when the kernel is idle; the kernel answers
 * under the same id. Stop (or the bubble's Cancel) on a queued question acts
 * in the page: it is never sent, and its text goes back to the input.
 */
import type {
  ChatCommand,
  IActiveCellManager,
  IChatCommandProvider,
  IChatCommandRegistry,
  IInputModel,
  IChatContext,
  IMessageContent,
  IMessageMetadata,
  INewMessage,
  IUser
} from '@jupyter/chat';
import {
  AbstractChatContext,
  AbstractChatModel,
  ChatCommandRegistry
} from '@jupyter/chat';
import type { WidgetModel } from '@jupyter-widgets/base';
import type { Kernel } from '@jupyterlab/services';
import type { ISignal } from '@lumino/signaling';
import { Signal } from '@lumino/signaling';

import type {
  ApprovalAnswer,
  FrontEndPanelMessage,
  ITokens,
  IToolCall,
  ITurnMessage,
  KernelPanelMessage
} from './panelProtocol';
import { isKernelPanelMessage } from './panelProtocol';
import { safeMarkdown } from './safeMarkdown';

/** What the panel shows about a turn besides its text (in the message's metadata). */
export interface ITurnInfo {
  role: 'user' | 'assistant';
  source: 'cell' | 'panel' | null;
  partial: boolean;
  /** The answer is still arriving. */
  streaming: boolean;
  model: string | null;
  tokens: ITokens | null;
  costUsd: number | null;
  /** On the bundled model: a cost of 0 shows as "$0, local". */
  free: boolean;
  thinking: string;
  /** Tool calls of the answer, in order (shown as text by panelMessage.tsx). */
  tools: IToolCall[];
  /** A question waiting in the page for the kernel (not sent yet). */
  queued: boolean;
}

/** The turn info of a chat message, if this panel made it. */
export function turnInfo(message: IMessageContent): ITurnInfo | null {
  const meta = message.metadata as { llmchat?: ITurnInfo } | undefined;
  return meta?.llmchat ?? null;
}

/** The person at the keyboard: their questions, from the panel or a cell. */
export const USER: IUser = {
  username: 'jupyter-llmchat-user',
  display_name: 'You',
  initials: 'Y',
  color: 'var(--jp-layout-color3)'
};

function assistant(model: string | null | undefined): IUser {
  return {
    username: 'jupyter-llmchat-assistant',
    display_name: model || 'Assistant',
    initials: 'AI',
    color: 'var(--jp-brand-color1)',
    bot: true
  };
}

/** A short line for the toolbar: an error (with its hint) or a status. */
export interface INotice {
  /** `note`: a quiet line that stays until the next question. */
  kind: 'error' | 'status' | 'note';
  text: string;
  hint?: string;
}

/** A question asked in the panel and not sent yet. */
interface IQueued {
  id: string;
  text: string;
  time: number;
}

/**
 * The kernel behind a widget model, where the widget manager has one (as
 * JupyterLab's and Notebook 7's do); null elsewhere (questions then go at once).
 */
function kernelOf(model: WidgetModel): Kernel.IKernelConnection | null {
  const manager = model.widget_manager as unknown as {
    kernel?: Kernel.IKernelConnection | null;
  };
  const kernel = manager?.kernel;
  return kernel && typeof kernel.status === 'string' && kernel.statusChanged
    ? kernel
    : null;
}

/** Kernel states in which a comm message would wait in the kernel's queue. */
const KERNEL_WAITING: ReadonlySet<string> = new Set([
  'busy',
  'starting',
  'restarting',
  'autorestarting'
]);

let nextQuestion = 0;

/** Queued questions sort this much (seconds) after the last message: strictly after it. */
const TICK = 0.001;

interface IStream {
  text: string;
  thinking: string;
  tools: IToolCall[];
  time: number;
  model: string | null;
}

export class KernelChatModel extends AbstractChatModel {
  constructor(options: KernelChatModel.IOptions) {
    super({
      config: {
        sendWithShiftEnter: false,
        stackMessages: true,
        enableCodeToolbar: true,
        unreadNotifications: false,
        sendTypingNotification: false
      },
      activeCellManager: options.activeCellManager ?? null
    });
    this._widget = options.widgetModel;
    this.name = `jupyter-llmchat-${this._widget.model_id}`;
    this._widget.on('msg:custom', this._onCustom, this);
    this._widget.on('change:busy', this._onBusy, this);
    this._kernel = kernelOf(this._widget);
    this._kernel?.statusChanged.connect(this._onKernelStatus, this);
    this._kernel?.anyMessage?.connect(this._onKernelMessage, this);
    // Nothing here is unread: it is the user's own conversation. (Unread messages
    // would add "go to unread" buttons over the messages.)
    this.lastRead = Number.POSITIVE_INFINITY;
    this._onBusy();
    this.setReady();
  }

  /** Questions are the user's: they show on the right, without an avatar. */
  get user(): IUser {
    return USER;
  }

  /** The kernel widget this chat talks through. */
  get widgetModel(): WidgetModel {
    return this._widget;
  }

  /** Emitted with an error or status to show, or null to clear it. */
  get noticeChanged(): ISignal<this, INotice | null> {
    return this._noticeChanged;
  }

  get notice(): INotice | null {
    return this._notice;
  }

  /** How many messages of the history are not shown yet (panelHistory.ts). */
  get earlierCount(): number {
    return this._earlierCount;
  }

  /** The kernel was asked for the page before those shown and has not answered yet. */
  get earlierLoading(): boolean {
    return this._pageAsked !== null;
  }

  /** Emitted when `earlierCount` or `earlierLoading` changes. */
  get earlierChanged(): ISignal<this, void> {
    return this._earlierChanged;
  }

  /** Emitted just before a page of earlier messages goes in above the others. */
  get earlierArriving(): ISignal<this, void> {
    return this._earlierArriving;
  }

  /** Emitted when a whole history replaced the messages (the panel then shows its end). */
  get historyShown(): ISignal<this, void> {
    return this._historyShown;
  }

  /**
   * Ask the kernel for the page of the history before the messages shown (it
   * answers `history_page`, shown above the others); once, until it answers.
   */
  showEarlier(): void {
    const cursor = this._cursor;
    if (cursor === null || this._pageAsked === cursor) {
      return;
    }
    if (!this._widget.comm_live) {
      this._notConnected();
      return;
    }
    this._pageAsked = cursor;
    this._send({ type: 'history_page', before: cursor });
    this._earlierChanged.emit();
  }

  /** Emitted with the server's models (and an error, empty if none) when they arrive. */
  get modelsChanged(): ISignal<this, { models: string[]; error: string }> {
    return this._modelsChanged;
  }

  /** Ask the kernel for the server's models (it answers `models`). */
  requestModels(): void {
    this._send({ type: 'models' });
  }

  /** The session's model for later questions (from the panel and cells alike). */
  selectModel(name: string): void {
    this.setNotice(null);
    this._send({ type: 'model', name });
  }

  /** The kernel's variable names (for `@name`), asked afresh; [] if it does not answer soon. */
  names(): Promise<string[]> {
    if (this._namesWaiting === null) {
      this._namesWaiting = new Promise<string[]>(resolve => {
        const timer = setTimeout(() => {
          this._namesResolve = null;
          this._namesWaiting = null;
          resolve(this._names);
        }, 1000);
        this._namesResolve = (names: string[]) => {
          clearTimeout(timer);
          resolve(names);
        };
      });
      this._send({ type: 'names' });
    }
    return this._namesWaiting;
  }

  /** `@name` completion of the input, from the kernel's variable names. */
  readonly chatCommandRegistry: IChatCommandRegistry = makeRegistry(this);

  /** Emitted when the user sends a question. */
  get sent(): ISignal<this, void> {
    return this._sent;
  }

  /** Emitted when questions are queued or leave the queue. */
  get queueChanged(): ISignal<this, void> {
    return this._queueChanged;
  }

  /** Questions waiting in the page for the kernel. */
  get queued(): number {
    return this._queue.length;
  }

  sendMessage(message: INewMessage): boolean {
    const text = message.body;
    if (!text.trim()) {
      return false;
    }
    this.setNotice(null);
    const question: IQueued = {
      id: `q-${Date.now().toString(36)}-${++nextQuestion}`,
      text,
      // After everything shown, queued questions included.
      time: Math.max(Date.now() / 1000, (this._lastTime(new Set()) ?? 0) + TICK)
    };
    this._queue.push(question);
    this.messageAdded(this._queuedContent(question));
    this._queueChanged.emit();
    this._sent.emit();
    this._pump();
    return true;
  }

  /** Cancel a queued question (never sent); its text goes back to the input. */
  cancel(id: string): void {
    const index = this._queue.findIndex(q => q.id === id);
    if (index === -1) {
      return;
    }
    const [question] = this._queue.splice(index, 1);
    this._remove(id);
    this._giveBack(question.text);
    this._queueChanged.emit();
  }

  /** Ask the kernel for the history (it answers `history`: its latest exchanges). */
  hello(): void {
    this._send({ type: 'hello' });
  }

  /**
   * Stop: queued questions are cancelled here, at once (never sent); an answer
   * streaming from the panel is stopped in the kernel, which keeps what arrived.
   * While a cell runs, the kernel takes it at once where widget comms go over a
   * kernel subshell (JupyterLab 4.4+); elsewhere only when the cell ends, and a
   * status line says so.
   */
  stop(): void {
    for (const question of [...this._queue].reverse()) {
      this.cancel(question.id);
    }
    if (this._widget.get('busy') === true || this._inFlight !== null) {
      this._send({ type: 'stop' });
      if (this._stopWaitsForCell()) {
        this.setNotice({
          kind: 'status',
          text: 'stopping when the running cell ends',
          hint: 'this JupyterLab sends Stop to the kernel after the cell (4.4+ sends it at once)'
        });
      }
    }
  }

  /**
   * The kernel runs a cell and this front end sends comm messages to its main
   * queue (no kernel subshells: JupyterLab before 4.4, or a kernel without
   * them), so Stop is handled only when the cell ends.
   */
  private _stopWaitsForCell(): boolean {
    const kernel = this._kernel as
      | (Kernel.IKernelConnection & { supportsSubshells?: boolean })
      | null;
    return (
      kernel !== null &&
      KERNEL_WAITING.has(kernel.status) &&
      kernel.supportsSubshells !== true
    );
  }

  /** Talk through another session of the kernel (it answers `history`). */
  selectSession(name: string): void {
    this.setNotice(null);
    this._send({ type: 'session', name });
  }

  setNotice(notice: INotice | null): void {
    if (this._notice === notice) {
      return;
    }
    this._notice = notice;
    this._noticeChanged.emit(notice);
  }

  createChatContext(): IChatContext {
    return new KernelChatContext({ model: this });
  }

  override dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._widget.off(null, null, this);
    this._kernel?.statusChanged.disconnect(this._onKernelStatus, this);
    this._kernel?.anyMessage?.disconnect(this._onKernelMessage, this);
    this._streams.clear();
    super.dispose();
    Signal.clearData(this);
  }

  private _send(message: FrontEndPanelMessage): void {
    if (this._widget.comm_live) {
      this._widget.send(message);
    } else {
      this._notConnected();
    }
  }

  private _notConnected(): void {
    this.setNotice({
      kind: 'error',
      text: 'the kernel is not connected',
      hint: 'run %chat_panel again'
    });
  }

  private _onBusy(): void {
    const busy = this._widget.get('busy') === true;
    this.updateWriters(busy ? [{ user: assistant(this._currentModel()) }] : []);
    if (!busy && this._notice?.kind === 'status') {
      this.setNotice(null);
    }
    if (busy && this._inFlight !== null) {
      this._inFlightSeenBusy = true;
    } else if (!busy && this._inFlightSeenBusy) {
      // The question's answer is over even if its own end was not shown here
      // (the view switched session meanwhile): the next may go.
      this._inFlight = null;
      this._inFlightSeenBusy = false;
    }
    this._pump();
  }

  private _onKernelStatus(): void {
    const status = this._kernel?.status;
    if (status !== 'busy' && status !== 'idle') {
      this._executing.clear(); // restarted, dead or unknown: no running cell will say it ended
    }
    this._pump();
  }

  /**
   * Cells running, told by their own status messages. The kernel's status alone
   * is not enough: a comm message handled on a subshell while a cell runs (the
   * notebook's `order`, a widget's message) ends with an "idle" that JupyterLab
   * takes for the whole kernel's, and a queued question would go out mid-cell.
   */
  private _onKernelMessage(_: unknown, args: Kernel.IAnyMessageArgs): void {
    const msg = args.msg;
    if (args.direction !== 'recv' || msg.header.msg_type !== 'status') {
      return;
    }
    const parent = msg.parent_header as { msg_type?: string; msg_id?: string };
    if (parent?.msg_type !== 'execute_request' || !parent.msg_id) {
      return;
    }
    const state = (msg.content as { execution_state?: string }).execution_state;
    if (state === 'busy') {
      this._executing.add(parent.msg_id);
    } else if (state === 'idle' && this._executing.delete(parent.msg_id)) {
      this._pump();
    }
  }

  /** Send the first queued question if nothing is in the way of it. */
  private _pump(): void {
    if (
      this.isDisposed ||
      this._queue.length === 0 ||
      this._inFlight !== null ||
      this._widget.get('busy') === true ||
      this._executing.size > 0 ||
      (this._kernel !== null && KERNEL_WAITING.has(this._kernel.status))
    ) {
      return;
    }
    if (!this._widget.comm_live) {
      // Kept queued (Stop cancels it); the notice says why it waits.
      this._notConnected();
      return;
    }
    const question = this._queue.shift()!;
    this._inFlight = question.id;
    this._inFlightSeenBusy = false;
    this._inFlightText = question.text;
    this._queueChanged.emit();
    // Shown as asked (no longer queued) until the kernel's `user` replaces it.
    this.messageAdded(this._queuedContent(question, false));
    this._send({ type: 'send', text: question.text, id: question.id });
  }

  /** The question in flight ended (answered, refused or failed): the next may go. */
  private _landed(userId: string | undefined): void {
    if (userId === undefined || userId === this._inFlight) {
      this._inFlight = null;
      this._inFlightSeenBusy = false;
    }
    // After the kernel's message is handled (a refusal gives the text back first).
    setTimeout(() => this._pump(), 0);
  }

  /** Put a question's text back in the input, unless the user is typing another. */
  private _giveBack(text: string): void {
    if (!text) {
      return;
    }
    const current = this.input.value;
    if (!current.trim()) {
      this.input.value = text;
    } else if (!current.includes(text)) {
      this.input.value = `${text}\n\n${current}`;
    }
  }

  private _queuedContent(question: IQueued, queued = true): IMessageContent {
    return this._content(
      {
        id: question.id,
        role: 'user',
        text: question.text,
        source: 'panel',
        time: question.time
      },
      false,
      queued
    );
  }

  /** Keep queued questions after every other message (they are asked last). */
  private _keepQueuedLast(): void {
    if (this._queue.length === 0) {
      return;
    }
    const ids = this._queuedIds();
    const firstQueued = this.messages.findIndex(m => ids.has(m.id));
    const after = this.messages.slice(Math.max(firstQueued, 0));
    if (firstQueued !== -1 && after.every(m => ids.has(m.id))) {
      return;
    }
    const last = this._lastTime() ?? 0;
    for (const question of this._queue) {
      question.time = Math.max(question.time, last + TICK);
      this.messageAdded(this._queuedContent(question));
    }
  }

  private _currentModel(): string | null {
    const model: unknown = this._widget.get('model');
    return typeof model === 'string' && model ? model : null;
  }

  private _onCustom(content: unknown): void {
    if (this.isDisposed || !isKernelPanelMessage(content)) {
      return;
    }
    try {
      this._handle(content);
    } catch (error) {
      console.error('jupyter-llmchat: bad panel message', content, error);
    }
  }

  private _handle(msg: KernelPanelMessage): void {
    this._dispatch(msg);
    if (msg.type !== 'names' && msg.type !== 'models') {
      this._keepQueuedLast();
    }
  }

  private _dispatch(msg: KernelPanelMessage): void {
    switch (msg.type) {
      case 'history': {
        this._streams.clear();
        // A question in flight belongs to what was shown before (or is in this history).
        this._inFlight = null;
        this._inFlightSeenBusy = false;
        this.clearMessages();
        // The latest exchanges only: the kernel sends earlier ones as the user scrolls up.
        this._setEarlier(msg.earlier, msg.cursor);
        if (msg.messages.length) {
          this.messagesInserted(
            0,
            msg.messages.map(m => this._content(m))
          );
        }
        this._earlierChanged.emit();
        this._historyShown.emit();
        break;
      }
      case 'history_page':
        // An answer for another cursor belongs to a history no longer shown.
        if (msg.before === this._cursor) {
          this._earlierArriving.emit();
          this._setEarlier(msg.earlier, msg.cursor);
          if (msg.messages.length) {
            this.messagesInserted(
              0,
              msg.messages.map(m => this._content(m))
            );
          }
          this._earlierChanged.emit();
        }
        break;
      case 'append':
        msg.messages.forEach(m => this._addLast(m));
        break;
      case 'user':
        this._addLast(msg.message);
        break;
      case 'delta':
        this._delta(msg.id, msg.kind, msg.text);
        break;
      case 'tool':
        this._tool(msg.id, msg.call);
        break;
      case 'approve':
        this._asking(msg.id, msg.call_id, true);
        break;
      case 'done':
        this._finish(
          msg.message.id,
          msg.message,
          msg.recorded !== false,
          msg.user_id
        );
        this._landed(msg.user_id);
        break;
      case 'error':
        // In answer to a question (`recorded` is set): mark or drop its turn.
        if (msg.recorded !== undefined) {
          this._finish(
            msg.id ?? '',
            null,
            msg.recorded,
            msg.user_id ?? this._inFlight ?? undefined
          );
          this._landed(msg.user_id);
        }
        this.setNotice({
          kind: 'error',
          text: msg.message,
          hint: msg.hint || undefined
        });
        break;
      case 'status':
        this.setNotice({ kind: 'status', text: msg.text });
        break;
      case 'notice':
        this.setNotice({ kind: 'note', text: msg.text });
        break;
      case 'names': {
        const names = Array.isArray(msg.names)
          ? msg.names.filter((n): n is string => typeof n === 'string')
          : [];
        this._names = names;
        const resolve = this._namesResolve;
        this._namesResolve = null;
        this._namesWaiting = null;
        resolve?.(names);
        break;
      }
      case 'models': {
        const models = Array.isArray(msg.models)
          ? msg.models.filter((n): n is string => typeof n === 'string')
          : [];
        this._modelsChanged.emit({
          models,
          error: typeof msg.error === 'string' ? msg.error : ''
        });
        break;
      }
    }
  }

  /** What the kernel said is before the messages shown (nothing asked for yet). */
  private _setEarlier(earlier: unknown, cursor: unknown): void {
    this._cursor = typeof cursor === 'string' ? cursor : null;
    this._earlierCount =
      this._cursor !== null && typeof earlier === 'number' && earlier > 0 ? earlier : 0;
    this._pageAsked = null;
  }

  private _stream(id: string): IStream {
    let stream = this._streams.get(id);
    if (stream === undefined) {
      // The question's time (the kernel's clock), as the history will say.
      stream = {
        text: '',
        thinking: '',
        tools: [],
        time: this._lastTime() ?? Date.now() / 1000,
        model: this._currentModel()
      };
      this._streams.set(id, stream);
    }
    return stream;
  }

  private _delta(id: string, kind: 'text' | 'thinking', text: string): void {
    const stream = this._stream(id);
    stream[kind] += text;
    this._showStream(id, stream);
  }

  /**
   * Approve / Deny on a call's line: the answer goes to the kernel, and the
   * buttons go (the call's result, or its refusal, comes as a `tool` message).
   */
  approve(answerId: string, callId: string, answer: ApprovalAnswer): void {
    this._send({ type: 'approval', call_id: callId, answer });
    this._asking(answerId, callId, false);
  }

  /** The kernel asks about a call of a streaming answer, or the question is answered. */
  private _asking(id: string, callId: string, asking: boolean): void {
    const stream = this._streams.get(id);
    const index = stream?.tools.findIndex(c => c.id === callId) ?? -1;
    if (stream === undefined || index === -1) {
      return;
    }
    stream.tools[index] = { ...stream.tools[index], asking };
    this._showStream(id, stream);
  }

  /** A tool call asked for (a new line) or its result (the same line, updated). */
  private _tool(id: string, call: IToolCall): void {
    const stream = this._stream(id);
    const index = stream.tools.findIndex(c => c.id === call.id);
    if (index === -1) {
      stream.tools.push(call);
    } else {
      stream.tools[index] = call;
    }
    this._showStream(id, stream);
  }

  private _showStream(id: string, stream: IStream): void {
    this.messageAdded(
      this._content(
        {
          id,
          role: 'assistant',
          text: stream.text,
          thinking: stream.thinking,
          tools: stream.tools,
          source: 'panel',
          model: stream.model,
          time: stream.time
        },
        true
      )
    );
  }

  /** The end of a panel question: mark its answer final, or drop it if history did not change. */
  private _finish(
    id: string,
    final: ITurnMessage | null,
    recorded: boolean,
    userId: string | undefined
  ): void {
    const stream = this._streams.get(id);
    this._streams.delete(id);
    if (!recorded) {
      this._remove(id);
      if (userId !== undefined) {
        this._remove(userId);
      }
      // Give the question back, so it can be sent again.
      if (userId === this._inFlight || userId === undefined) {
        this._giveBack(this._inFlightText);
      }
      return;
    }
    if (stream === undefined) {
      return;
    }
    const turn: ITurnMessage = final ?? {
      id,
      role: 'assistant',
      partial: true
    };
    this.messageAdded(
      this._content({
        ...turn,
        id,
        source: turn.source ?? 'panel',
        model: turn.model ?? stream.model,
        text: stream.text,
        thinking: stream.thinking,
        tools: stream.tools,
        time: stream.time
      })
    );
  }

  /** Add a new turn after every message shown, whatever the clocks say. */
  private _addLast(m: ITurnMessage): void {
    const last = this._lastTime();
    const time = m.time ?? Date.now() / 1000;
    this.messageAdded(
      this._content({ ...m, time: last === null ? time : Math.max(time, last) })
    );
  }

  private _queuedIds(): ReadonlySet<string> {
    return new Set(this._queue.map(q => q.id));
  }

  /** The time of the last message shown, not counting ``except`` (by default the queued
   * questions, which stay after everything else). */
  private _lastTime(except: ReadonlySet<string> = this._queuedIds()): number | null {
    for (let i = this.messages.length - 1; i >= 0; i--) {
      if (!except.has(this.messages[i].id)) {
        return this.messages[i].time;
      }
    }
    return null;
  }

  private _remove(id: string): void {
    const index = this.messages.findIndex(m => m.id === id);
    if (index !== -1) {
      this.messagesDeleted(index, 1);
    }
  }

  private _content(
    m: ITurnMessage,
    streaming = false,
    queued = false
  ): IMessageContent {
    const info: ITurnInfo = {
      role: m.role,
      source: m.source ?? null,
      partial: m.partial === true,
      streaming,
      model: m.model ?? null,
      tokens: m.tokens ?? null,
      costUsd: m.cost_usd ?? null,
      free: m.free === true,
      thinking: m.thinking ?? '',
      tools: Array.isArray(m.tools) ? m.tools : [],
      queued
    };
    const metadata: IMessageMetadata = { llmchat: info };
    return {
      type: 'msg',
      id: m.id,
      // Model text and restored records are untrusted (DESIGN §9): the sanitizer
      // below keeps <img src>, so images become links here first.
      body: safeMarkdown(m.text ?? ''),
      time: m.time ?? Date.now() / 1000,
      sender: m.role === 'user' ? USER : assistant(m.model),
      raw_time: false,
      metadata
    };
  }

  private readonly _widget: WidgetModel;
  /** The history's messages before those shown (the kernel keeps them). */
  private _earlierCount = 0;
  /** The kernel's cursor for the page before those shown; null when nothing is earlier. */
  private _cursor: string | null = null;
  /** The cursor of the page asked for and not arrived yet. */
  private _pageAsked: string | null = null;
  private readonly _earlierChanged = new Signal<this, void>(this);
  private readonly _earlierArriving = new Signal<this, void>(this);
  private readonly _historyShown = new Signal<this, void>(this);
  private readonly _streams = new Map<string, IStream>();
  private _notice: INotice | null = null;
  private readonly _kernel: Kernel.IKernelConnection | null;
  /** The execute requests the kernel said it runs and has not said it ended. */
  private readonly _executing = new Set<string>();
  /** Questions asked and not sent yet, in order. */
  private readonly _queue: IQueued[] = [];
  /** The question sent and not yet answered, refused or failed. */
  private _inFlight: string | null = null;
  private _inFlightText = '';
  /** The kernel said busy since the question in flight was sent. */
  private _inFlightSeenBusy = false;
  private readonly _queueChanged = new Signal<this, void>(this);
  private readonly _noticeChanged = new Signal<this, INotice | null>(this);
  private readonly _sent = new Signal<this, void>(this);
  private readonly _modelsChanged = new Signal<
    this,
    { models: string[]; error: string }
  >(this);
  private _names: string[] = [];
  private _namesWaiting: Promise<string[]> | null = null;
  private _namesResolve: ((names: string[]) => void) | null = null;
}

/** At most this many `@name` completions in the menu. */
const MAX_COMPLETIONS = 30;

/**
 * `@name` completion: @jupyter/chat's chat commands menu, offered the kernel's
 * top-level variable names (names only, never values). The kernel attaches the
 * values when the question arrives, as `%%chat --with name` does.
 */
function makeRegistry(model: KernelChatModel): IChatCommandRegistry {
  const provider: IChatCommandProvider = {
    id: 'jupyter-llmchat:kernel-names',
    async listCommandCompletions(input: IInputModel): Promise<ChatCommand[]> {
      const word = input.currentWord ?? '';
      if (!word.startsWith('@')) {
        return [];
      }
      const prefix = word.slice(1);
      const names = await model.names();
      return names
        .filter(n => n.startsWith(prefix))
        .slice(0, MAX_COMPLETIONS)
        .map(n => ({
          name: `@${n}`,
          providerId: 'jupyter-llmchat:kernel-names',
          description: 'attach this kernel value',
          spaceOnAccept: true
        }));
    },
    async onSubmit(): Promise<void> {
      // The kernel reads the @names of the question it receives.
    }
  };
  const registry = new ChatCommandRegistry();
  registry.addProvider(provider);
  return registry;
}

export namespace KernelChatModel {
  export interface IOptions {
    widgetModel: WidgetModel;
    /** Enables the code toolbar's insert/replace buttons (the active notebook cell). */
    activeCellManager?: IActiveCellManager | null;
  }
}

class KernelChatContext extends AbstractChatContext {
  get users(): IUser[] {
    return [USER];
  }
}
