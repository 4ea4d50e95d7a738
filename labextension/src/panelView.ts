/**
 * The ipywidgets side of the chat panel: the model (its defaults mirror the
 * kernel's `ChatPanel` traits) and the view `%chat_panel` displays in a cell.
 * The view is one line; the chat itself is docked on the right (`ChatDock`),
 * one per widget model, which is one per notebook kernel and session.
 */
import type { WidgetModel } from '@jupyter-widgets/base';
import { DOMWidgetModel, DOMWidgetView } from '@jupyter-widgets/base';
import type { ISignal } from '@lumino/signaling';

import { sessionOf } from './panelDock';
import { WIDGET_MODULE, WIDGET_MODULE_VERSION } from './tokens';

export class ChatPanelModel extends DOMWidgetModel {
  override defaults(): ReturnType<DOMWidgetModel['defaults']> {
    return {
      ...super.defaults(),
      _model_name: 'ChatPanelModel',
      _view_name: 'ChatPanelView',
      _model_module: WIDGET_MODULE,
      _view_module: WIDGET_MODULE,
      _model_module_version: `^${WIDGET_MODULE_VERSION}`,
      _view_module_version: `^${WIDGET_MODULE_VERSION}`,
      session: 'default',
      sessions: [],
      busy: false,
      model: '',
      usage: {}
    };
  }
}

/** What a view needs from the application: the docked panels. */
export interface IChatDocks {
  /** Show (creating it if needed) and focus the dock of this widget model. */
  open(model: WidgetModel, origin?: HTMLElement): void;
  /** Whether the dock of this widget model is open. */
  isOpen(model: WidgetModel): boolean;
  /** Tell the dock which notebook shows this cell output. */
  locate(model: WidgetModel, origin: HTMLElement): void;
  /** Emitted with a widget model's id when its dock opens or closes. */
  readonly changed: ISignal<IChatDocks, string>;
}

/** The view class, bound to the application's docks. */
export function createChatPanelView(docks: IChatDocks): typeof DOMWidgetView {
  return class ChatPanelView extends DOMWidgetView {
    override render(): void {
      super.render();
      this.el.classList.add('jp-llmchat-panel-line');
      this._text = document.createElement('span');
      this._show = document.createElement('button');
      this._show.type = 'button';
      this._show.className = 'jp-llmchat-show';
      this._show.textContent = 'Show';
      this._show.addEventListener('click', () => {
        if (this.model.comm_live) {
          docks.open(this.model, this.el);
        }
      });
      this._action = document.createElement('span');
      this._action.append(' — ', this._show);
      this.el.append(this._text, this._action);

      this.listenTo(this.model, 'change:session', this._update);
      this.listenTo(this.model, 'comm_live_update', this._update);
      docks.changed.connect(this._onDocksChanged, this);
      this._update();

      // A saved widget state without a kernel is only a line; a live one opens its dock.
      if (this.model.comm_live) {
        docks.open(this.model, this.el);
        void this.displayed.then(() => docks.locate(this.model, this.el));
      }
    }

    override remove(): void {
      docks.changed.disconnect(this._onDocksChanged, this);
      return super.remove();
    }

    private _onDocksChanged(_: IChatDocks, modelId: string): void {
      if (modelId === this.model.model_id) {
        this._update();
      }
    }

    private _update(): void {
      const session = sessionOf(this.model);
      const live = this.model.comm_live;
      const open = live && docks.isOpen(this.model);
      const where = !live
        ? 'is not connected to a kernel; run %chat_panel again'
        : open
          ? 'is open on the right'
          : 'is closed';
      this._text.textContent = `Chat panel for session ${session} ${where}`;
      this._action.hidden = !live;
      this._show.setAttribute(
        'aria-label',
        `Show the chat panel for session ${session}`
      );
    }

    private _text!: HTMLSpanElement;
    private _show!: HTMLButtonElement;
    private _action!: HTMLSpanElement;
  };
}
