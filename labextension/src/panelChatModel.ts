/**
 * The @jupyter/chat model of a chat panel: it turns the kernel widget's custom
 * messages into chat messages and sends the user's questions back.
 *
 * An answer streams as deltas (appended text); each delta re-adds the message
 * under the same id, which replaces it, so only the browser re-renders the
 * growing Markdown, never the wire.
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
import type { ISignal } from '@lumino/signaling';
import { Signal } from '@lumino/signaling';

import type {
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

  sendMessage(message: INewMessage): boolean {
    const text = message.body;
    if (!text.trim()) {
      return false;
    }
    this._lastSent = text;
    this.setNotice(null);
    this._send({ type: 'send', text });
    this._sent.emit();
    return true;
  }

  /** Ask the kernel for the whole history (it answers `history`). */
  hello(): void {
    this._send({ type: 'hello' });
  }

  /** Stop the answer streaming from the panel; the kernel keeps what arrived, partial. */
  stop(): void {
    this._send({ type: 'stop' });
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
    this._streams.clear();
    super.dispose();
    Signal.clearData(this);
  }

  private _send(message: FrontEndPanelMessage): void {
    if (this._widget.comm_live) {
      this._widget.send(message);
    } else {
      this.setNotice({
        kind: 'error',
        text: 'the kernel is not connected',
        hint: 'run %chat_panel again'
      });
    }
  }

  private _onBusy(): void {
    const busy = this._widget.get('busy') === true;
    this.updateWriters(busy ? [{ user: assistant(this._currentModel()) }] : []);
    if (!busy && this._notice?.kind === 'status') {
      this.setNotice(null);
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
    switch (msg.type) {
      case 'history':
        this._streams.clear();
        this.clearMessages();
        if (msg.messages.length) {
          this.messagesInserted(
            0,
            msg.messages.map(m => this._content(m))
          );
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
      case 'done':
        this._finish(
          msg.message.id,
          msg.message,
          msg.recorded !== false,
          msg.user_id
        );
        break;
      case 'error':
        // In answer to a question (`recorded` is set): mark or drop its turn.
        if (msg.recorded !== undefined) {
          this._finish(msg.id ?? '', null, msg.recorded, msg.user_id);
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
      if (this._lastSent && !this.input.value.trim()) {
        this.input.value = this._lastSent;
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

  private _lastTime(): number | null {
    const last = this.messages[this.messages.length - 1];
    return last === undefined ? null : last.time;
  }

  private _remove(id: string): void {
    const index = this.messages.findIndex(m => m.id === id);
    if (index !== -1) {
      this.messagesDeleted(index, 1);
    }
  }

  private _content(m: ITurnMessage, streaming = false): IMessageContent {
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
      tools: Array.isArray(m.tools) ? m.tools : []
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
  private readonly _streams = new Map<string, IStream>();
  private _notice: INotice | null = null;
  private _lastSent = '';
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
