/**
 * The chat panel docked in the right side area: a small toolbar (session
 * picker, Stop, status, error line) above @jupyter/chat's chat UI.
 */
import type { IActiveCellManager } from '@jupyter/chat';
import { ChatWidget, InputToolbarRegistry, chatIcon } from '@jupyter/chat';
import type { WidgetModel } from '@jupyter-widgets/base';
import type { IThemeManager } from '@jupyterlab/apputils';
import type { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import type { LabIcon } from '@jupyterlab/ui-components';
import { closeIcon, stopIcon } from '@jupyterlab/ui-components';
import { Panel, Widget } from '@lumino/widgets';

import type { INotice } from './panelChatModel';
import { KernelChatModel } from './panelChatModel';
import {
  formatCost,
  formatCount,
  formatLimit,
  formatRowCost
} from './costFormat';
import {
  createFooterRegistry,
  createPreambleRegistry,
  formatTokens
} from './panelMessage';
import type { IUsage } from './panelProtocol';
import { EarlierControl } from './panelHistory';

/** The session the widget is bound to (its `session` trait). */
export function sessionOf(model: WidgetModel): string {
  const session: unknown = model.get('session');
  return typeof session === 'string' && session ? session : 'default';
}

export class ChatDock extends Panel {
  constructor(options: ChatDock.IOptions) {
    super();
    const { widgetModel } = options;
    this._widgetModel = widgetModel;
    this._notebook = options.notebook ?? null;
    this.id = `jupyter-llmchat-panel-${widgetModel.model_id}`;
    this.addClass('jp-llmchat-dock');
    this.title.icon = chatIcon;
    this.title.closable = true;

    this.chatModel = new KernelChatModel({
      widgetModel,
      activeCellManager: options.activeCellManager
    });
    const inputToolbarRegistry = InputToolbarRegistry.defaultToolbarRegistry();
    // Attachments need a document manager and mean nothing to the kernel's session.
    inputToolbarRegistry.hide('attach');

    this._toolbar = new PanelToolbar(
      this.chatModel,
      options.closeButton === false ? null : () => this.dispose()
    );
    this.addWidget(this._toolbar);
    this._chat = new ChatWidget({
      model: this.chatModel,
      rmRegistry: options.rmRegistry,
      themeManager: options.themeManager ?? null,
      inputToolbarRegistry,
      chatCommandRegistry: this.chatModel.chatCommandRegistry,
      messageFooterRegistry: createFooterRegistry(),
      messagePreambleRegistry: createPreambleRegistry(),
      area: 'sidebar'
    });
    this._chat.addClass('jp-llmchat-chat');
    // A long history shows from its end; this line (and scrolling up) shows the rest.
    this.addWidget(new EarlierControl(this.chatModel, this._chat.node));
    this.addWidget(this._chat);

    this._follow = new FollowBottom(this._chat.node);
    this.chatModel.messagesUpdated.connect(this._follow.watch, this._follow);
    this.chatModel.sent.connect(this._follow.pin, this._follow);
    this.chatModel.historyShown.connect(this._follow.settle, this._follow);

    widgetModel.on('change:session', this._updateTitle, this);
    this._updateTitle();
    this.chatModel.hello();
  }

  readonly chatModel: KernelChatModel;

  /** The notebook's name, shown in the caption; set once the cell output is found. */
  set notebook(name: string | null) {
    this._notebook = name;
    this._updateTitle();
  }

  /** Put the keyboard focus in the chat input. */
  focusInput(): void {
    this.chatModel.input.focus();
  }

  override dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._widgetModel.off(null, null, this);
    this._follow.dispose();
    super.dispose();
    this.chatModel.dispose();
  }

  private _updateTitle(): void {
    const session = sessionOf(this._widgetModel);
    this.title.label = `LLM chat (${session})`;
    this.title.caption = this._notebook
      ? `LLM chat (${session}) — ${this._notebook}`
      : `LLM chat (${session})`;
  }

  private readonly _widgetModel: WidgetModel;
  private readonly _toolbar: PanelToolbar;
  private readonly _chat: ChatWidget;
  private readonly _follow: FollowBottom;
  private _notebook: string | null;
}

/**
 * Keeps the message list scrolled to the bottom while an answer grows, unless
 * the user scrolled up to read. @jupyter/chat pins the bottom with CSS
 * `overflow-anchor`, which does nothing while the list is still at its top.
 */
class FollowBottom {
  constructor(root: HTMLElement) {
    this._root = root;
  }

  /** Find the scroller once React has rendered it, and follow its content's size. */
  watch(): void {
    if (this._scroller !== null && !this._scroller.isConnected) {
      // @jupyter/chat may mount its message list again (a new scroller).
      this._unwatch();
    }
    if (this._scroller !== null || this._disposed) {
      return;
    }
    const box = this._root.querySelector<HTMLElement>(
      '.jp-chat-messages-container'
    );
    let scroller = box?.parentElement ?? null;
    while (scroller !== null && scroller !== this._root) {
      if (getComputedStyle(scroller).overflowY === 'scroll') {
        break;
      }
      scroller = scroller.parentElement;
    }
    if (
      box === null ||
      box === undefined ||
      scroller === null ||
      scroller === this._root
    ) {
      // Not rendered yet (React renders on a later frame): look again then, or a
      // history that arrives all at once would stay scrolled to its top.
      if (!this._looking) {
        this._looking = true;
        requestAnimationFrame(() => {
          this._looking = false;
          this.watch();
        });
      }
      return;
    }
    this._scroller = scroller;
    scroller.addEventListener('scroll', this._onScroll, { passive: true });
    this._observer = new ResizeObserver(() => {
      if (this._stick && this._scroller !== null) {
        this._toBottom(this._scroller);
      }
    });
    this._observer.observe(box);
    // The scroller shrinks when the error line appears: keep the last line in view.
    this._observer.observe(scroller);
  }

  /** Follow again (the user just asked something). */
  pin(): void {
    this._stick = true;
    if (this._scroller !== null) {
      this._toBottom(this._scroller);
    }
  }

  /**
   * A whole history arrived: show its end once React and the rendermime have
   * laid it out (over a few frames, however the observers raced with it).
   */
  settle(): void {
    this._stick = true;
    let frames = 0;
    let height = -1;
    const step = (): void => {
      if (this._disposed || !this._stick) {
        return;
      }
      this.watch();
      const el = this._scroller;
      if (el !== null) {
        this._toBottom(el);
      }
      const now = el?.scrollHeight ?? -1;
      frames = now === height ? frames + 1 : 0;
      height = now;
      if (frames < 10) {
        requestAnimationFrame(step);
      }
    };
    requestAnimationFrame(step);
  }

  private _toBottom(scroller: HTMLElement): void {
    scroller.scrollTop = scroller.scrollHeight;
    this._pinnedAt = scroller.scrollTop;
  }

  dispose(): void {
    this._disposed = true;
    this._unwatch();
  }

  private _unwatch(): void {
    this._observer?.disconnect();
    this._observer = null;
    this._scroller?.removeEventListener('scroll', this._onScroll);
    this._scroller = null;
  }

  private readonly _onScroll = (): void => {
    const el = this._scroller;
    // The event of our own scroll comes a frame later, when a history still
    // rendering may have grown below it: only a scroll of the user's unpins.
    if (el !== null && Math.abs(el.scrollTop - this._pinnedAt) > 1) {
      this._stick = el.scrollHeight - el.scrollTop - el.clientHeight < 48;
    }
  };

  private readonly _root: HTMLElement;
  private _scroller: HTMLElement | null = null;
  private _observer: ResizeObserver | null = null;
  private _stick = true;
  private _disposed = false;
  private _looking = false;
  private _pinnedAt = -1;
}

export namespace ChatDock {
  export interface IOptions {
    widgetModel: WidgetModel;
    rmRegistry: IRenderMimeRegistry;
    themeManager?: IThemeManager | null;
    activeCellManager?: IActiveCellManager | null;
    notebook?: string | null;
    /** Whether the toolbar has a close button (false where the shell gives one). */
    closeButton?: boolean;
  }
}

let nextId = 0;

/** Session picker, Stop, Close; then the status line and the error line. Plain DOM. */
class PanelToolbar extends Widget {
  constructor(chatModel: KernelChatModel, onClose: (() => void) | null) {
    super();
    this.addClass('jp-llmchat-toolbar');
    this._chatModel = chatModel;
    this._widget = chatModel.widgetModel;
    const node = this.node;
    node.setAttribute('role', 'group');
    node.setAttribute('aria-label', 'LLM chat controls');

    const row = document.createElement('div');
    row.className = 'jp-llmchat-toolbar-row';
    const selectId = `jp-llmchat-session-${++nextId}`;
    const label = document.createElement('label');
    label.className = 'jp-llmchat-session-label';
    label.htmlFor = selectId;
    label.textContent = 'Session';
    this._select = document.createElement('select');
    this._select.id = selectId;
    this._select.className = 'jp-llmchat-session';
    this._select.setAttribute('aria-label', 'Chat session');
    this._select.title =
      'The session this panel talks through (shared with %%chat -s NAME cells)';
    this._select.addEventListener('change', () => {
      const name = this._select.value;
      if (name && name !== sessionOf(this._widget)) {
        chatModel.selectSession(name);
      }
    });

    const modelId = `jp-llmchat-model-${nextId}`;
    const modelLabel = document.createElement('label');
    modelLabel.className = 'jp-llmchat-session-label';
    modelLabel.htmlFor = modelId;
    modelLabel.textContent = 'Model';
    this._model = document.createElement('select');
    this._model.id = modelId;
    this._model.className = 'jp-llmchat-model';
    this._model.setAttribute('aria-label', 'Model');
    this._model.title =
      "The session's model for later questions (the server's /models)";
    this._model.addEventListener('change', () => {
      const name = this._model.value;
      if (name && name !== this._widget.get('model')) {
        chatModel.selectModel(name);
      }
    });
    // The list is asked for when the picker is about to open, and once now.
    this._model.addEventListener('mousedown', () => chatModel.requestModels());
    this._model.addEventListener('focus', () => chatModel.requestModels());
    chatModel.modelsChanged.connect(this._onModels, this);

    this._stop = this._button(
      'jp-llmchat-stop',
      'Stop',
      'Stop the answer',
      stopIcon
    );
    this._stop.addEventListener('click', () => chatModel.stop());
    const close = this._button(
      'jp-llmchat-close',
      '',
      'Close the chat panel',
      closeIcon
    );
    if (onClose !== null) {
      close.addEventListener('click', onClose);
    }

    const spacer = document.createElement('span');
    spacer.className = 'jp-llmchat-spacer';
    row.append(label, this._select, this._stop, spacer);
    // Notebook 7's side panel has a close button of its own: one is enough.
    if (onClose !== null) {
      row.append(close);
    }

    this._status = document.createElement('div');
    this._status.className = 'jp-llmchat-status';
    this._status.setAttribute('aria-live', 'polite');

    this._error = document.createElement('div');
    this._error.className = 'jp-llmchat-error';
    this._error.setAttribute('role', 'alert');
    const texts = document.createElement('div');
    texts.className = 'jp-llmchat-error-texts';
    this._errorText = document.createElement('div');
    this._errorText.className = 'jp-llmchat-error-text';
    this._errorHint = document.createElement('div');
    this._errorHint.className = 'jp-llmchat-error-hint';
    texts.append(this._errorText, this._errorHint);
    const dismiss = this._button(
      'jp-llmchat-dismiss',
      '',
      'Dismiss the error',
      closeIcon
    );
    dismiss.addEventListener('click', () => chatModel.setNotice(null));
    this._error.append(texts, dismiss);

    this._note = document.createElement('div');
    this._note.className = 'jp-llmchat-note';
    this._note.setAttribute('aria-live', 'polite');

    // The model on a row of its own: a narrow side panel keeps Stop and Close in view.
    const modelRow = document.createElement('div');
    modelRow.className = 'jp-llmchat-toolbar-row jp-llmchat-model-row';
    modelRow.append(modelLabel, this._model);

    node.append(row, modelRow, this._status, this._note, this._error);

    this._widget.on(
      'change:sessions change:session',
      this._renderSessions,
      this
    );
    this._widget.on(
      'change:busy change:model change:usage',
      this._renderStatus,
      this
    );
    this._widget.on('change:model', this._renderModels, this);
    chatModel.noticeChanged.connect(this._renderNotice, this);
    chatModel.queueChanged.connect(this._renderStatus, this);
    chatModel.requestModels();
    this._renderModels();
    this._renderSessions();
    this._renderStatus();
    this._renderNotice();
  }

  override dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._widget.off(null, null, this);
    this._chatModel.noticeChanged.disconnect(this._renderNotice, this);
    this._chatModel.queueChanged.disconnect(this._renderStatus, this);
    this._chatModel.modelsChanged.disconnect(this._onModels, this);
    super.dispose();
  }

  private _button(
    className: string,
    text: string,
    label: string,
    icon: LabIcon
  ): HTMLButtonElement {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = `jp-llmchat-button ${className}`;
    button.setAttribute('aria-label', label);
    button.title = label;
    button.append(
      icon.element({
        tag: 'span',
        className: 'jp-llmchat-icon',
        elementPosition: 'center',
        elementSize: 'normal'
      })
    );
    if (text) {
      const span = document.createElement('span');
      span.textContent = text;
      button.append(span);
    }
    return button;
  }

  private _renderSessions(): void {
    const current = sessionOf(this._widget);
    const raw: unknown = this._widget.get('sessions');
    const names = Array.isArray(raw)
      ? raw.filter((n): n is string => typeof n === 'string')
      : [];
    if (!names.includes(current)) {
      names.push(current);
    }
    this._select.replaceChildren(
      ...names.map(name => {
        const option = document.createElement('option');
        option.value = name;
        option.textContent = name;
        return option;
      })
    );
    this._select.value = current;
  }

  private _onModels(
    _: KernelChatModel,
    args: { models: string[]; error: string }
  ): void {
    this._models = args.models;
    // Quietly: the reason is in the tooltip, the picker still shows the current model.
    this._model.title = args.error
      ? `Could not list the server's models: ${args.error}`
      : "The session's model for later questions (the server's /models)";
    this._model.classList.toggle('jp-mod-error', !!args.error);
    this._renderModels();
  }

  private _renderModels(): void {
    const raw: unknown = this._widget.get('model');
    const current = typeof raw === 'string' ? raw : '';
    const names = [...this._models];
    if (current && !names.includes(current)) {
      names.unshift(current);
    }
    if (!names.length) {
      names.push('');
    }
    this._model.replaceChildren(
      ...names.map(name => {
        const option = document.createElement('option');
        option.value = name;
        option.textContent = name || '(server default)';
        return option;
      })
    );
    this._model.value = current;
  }

  private _renderStatus(): void {
    const busy = this._widget.get('busy') === true;
    const model: unknown = this._widget.get('model');
    const usage = (this._widget.get('usage') ?? {}) as IUsage;
    const parts = [
      typeof model === 'string' && model ? model : 'no model',
      `tokens ${formatTokens(usage.input, usage.output)}`,
      `cost ${formatRowCost(usage.cost_usd, usage.free === true)}`
    ];
    if (typeof usage.budget_usd === 'number') {
      parts.push(
        `budget ${formatLimit(usage.budget_usd)}, left ${formatCost(usage.left_usd)}`
      );
    }
    if (typeof usage.budget_tokens === 'number') {
      parts.push(
        `token budget ${formatCount(usage.budget_tokens)}, ` +
          `left ${formatCount(usage.left_tokens ?? 0)}`
      );
    }
    const notice = this._chatModel.notice;
    if (busy) {
      parts.push(notice?.kind === 'status' ? `${notice.text}…` : 'busy…');
    }
    const queued = this._chatModel.queued;
    if (queued) {
      parts.push(
        queued === 1
          ? '1 question waiting for the kernel…'
          : `${queued} questions waiting for the kernel…`
      );
    }
    this._status.textContent = parts.join(' · ');
    this._status.title = `Session totals: ${usage.answers ?? 0} answers`;
    // Stop acts on queued questions too, at once (they are still in the page).
    this._stop.disabled = !busy && !queued;
    const label = busy
      ? 'Stop the answer'
      : queued === 1
        ? 'Cancel the queued question'
        : 'Cancel the queued questions';
    this._stop.setAttribute('aria-label', label);
    this._stop.title = label;
    this.toggleClass('jp-mod-busy', busy || queued > 0);
  }

  private _renderNotice(): void {
    const notice: INotice | null = this._chatModel.notice;
    const error = notice?.kind === 'error' ? notice : null;
    const note = notice?.kind === 'note' ? notice : null;
    this._note.hidden = note === null;
    this._note.textContent = note?.text ?? '';
    this._error.hidden = error === null;
    // Long messages are cut to three lines; the tooltip has all of it.
    this._errorText.textContent = error ? `Error: ${error.text}` : '';
    this._errorHint.textContent = error?.hint ?? '';
    this._errorHint.hidden = !error?.hint;
    this._error.title = error
      ? [error.text, error.hint].filter(Boolean).join('\n')
      : '';
    // A refused session change leaves the trait as it was: show it again in the picker.
    this._renderSessions();
    this._renderStatus();
  }

  private readonly _chatModel: KernelChatModel;
  private readonly _widget: WidgetModel;
  private readonly _select: HTMLSelectElement;
  private readonly _stop: HTMLButtonElement;
  private readonly _status: HTMLDivElement;
  private readonly _note: HTMLDivElement;
  private readonly _model: HTMLSelectElement;
  private _models: string[] = [];
  private readonly _error: HTMLDivElement;
  private readonly _errorText: HTMLDivElement;
  private readonly _errorHint: HTMLDivElement;
}
