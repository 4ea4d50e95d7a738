/**
 * The chat panel plugin: registers the `jupyter-llmchat` widget module with
 * ipywidgets and docks one chat panel per widget model in the right area.
 *
 * The kernel reuses the widget of a session when `%chat_panel` runs again, so
 * one widget model stands for one notebook kernel and session: running it
 * again focuses the open dock, or re-creates it if it was closed.
 */
import type {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import type { IActiveCellManager } from '@jupyter/chat';
import { ActiveCellManager } from '@jupyter/chat';
import type { WidgetModel } from '@jupyter-widgets/base';
import { IJupyterWidgetRegistry } from '@jupyter-widgets/base';
import { IThemeManager } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import type { ISignal } from '@lumino/signaling';
import { Signal } from '@lumino/signaling';

import { ChatDock } from './panelDock';
import type { IChatDocks } from './panelView';
import { ChatPanelModel, createChatPanelView } from './panelView';
import { PluginIDs, WIDGET_MODULE, WIDGET_MODULE_VERSION } from './tokens';

/** Below the other right-area panels (property inspector, debugger). */
const DOCK_RANK = 900;

class ChatDocks implements IChatDocks {
  constructor(options: ChatDocks.IOptions) {
    this._app = options.app;
    this._tracker = options.tracker;
    this._rmRegistry = options.rmRegistry;
    this._themeManager = options.themeManager;
    this._activeCellManager = new NotebookCellManager(
      options.tracker,
      options.app.shell
    );
  }

  get changed(): ISignal<IChatDocks, string> {
    return this._changed;
  }

  isOpen(model: WidgetModel): boolean {
    const dock = this._docks.get(model.model_id);
    return dock !== undefined && !dock.isDisposed;
  }

  open(model: WidgetModel, origin?: HTMLElement): void {
    const id = model.model_id;
    let dock = this._docks.get(id);
    if (dock === undefined || dock.isDisposed) {
      dock = this._create(model);
      if (origin !== undefined) {
        this.locate(model, origin);
      }
      this._app.shell.add(dock, 'right', { rank: DOCK_RANK });
      this._changed.emit(id);
    }
    this._app.shell.activateById(dock.id);
    this._activeCellManager.refresh();
    dock.focusInput();
  }

  locate(model: WidgetModel, origin: HTMLElement): void {
    const dock = this._docks.get(model.model_id);
    const notebook = this._tracker.find(panel => panel.node.contains(origin));
    if (dock === undefined || notebook === undefined) {
      return;
    }
    dock.notebook = notebook.title.label;
    // Closing the notebook disposes its kernel connection: the dock would talk to nothing.
    if (!this._bound.has(dock)) {
      this._bound.add(dock);
      notebook.disposed.connect(() => dock.dispose());
    }
  }

  private _create(model: WidgetModel): ChatDock {
    const id = model.model_id;
    const dock = new ChatDock({
      widgetModel: model,
      rmRegistry: this._rmRegistry,
      themeManager: this._themeManager,
      activeCellManager: this._activeCellManager,
      // Notebook 7's right panel shows a close button over its widget already.
      closeButton: this._app.name !== 'Jupyter Notebook'
    });
    this._docks.set(id, dock);
    // The widget is gone (closed, or its kernel restarted or shut down): a new
    // %chat_panel makes a new widget, and with it a new dock.
    const onDestroy = (): void => dock.dispose();
    const onLive = (): void => {
      if (!model.comm_live) {
        dock.dispose();
      }
    };
    model.on('destroy', onDestroy);
    model.on('comm_live_update', onLive);
    dock.disposed.connect(() => {
      model.off('destroy', onDestroy);
      model.off('comm_live_update', onLive);
      if (this._docks.get(id) === dock) {
        this._docks.delete(id);
      }
      this._changed.emit(id);
    });
    return dock;
  }

  private readonly _app: JupyterFrontEnd;
  private readonly _tracker: INotebookTracker;
  private readonly _rmRegistry: IRenderMimeRegistry;
  private readonly _themeManager: IThemeManager | null;
  private readonly _activeCellManager: NotebookCellManager;
  /** The docks by widget model id. */
  private readonly _docks = new Map<string, ChatDock>();
  private readonly _bound = new WeakSet<ChatDock>();
  private readonly _changed = new Signal<IChatDocks, string>(this);
}

/**
 * The code toolbar's target: the active cell of the current notebook.
 *
 * @jupyter/chat's ActiveCellManager decides whether a notebook is visible only
 * when the shell's current widget changes, which in Notebook 7 happens before
 * the tracker knows the notebook, so its buttons stay disabled. This one asks
 * again on every relevant signal and when a dock opens, and leaves the editing
 * to the original.
 */
class NotebookCellManager implements IActiveCellManager {
  constructor(tracker: INotebookTracker, shell: JupyterFrontEnd.IShell) {
    this._tracker = tracker;
    this._inner = new ActiveCellManager({ tracker, shell });
    tracker.currentChanged.connect(this._update, this);
    tracker.activeCellChanged.connect(this._update, this);
    shell.currentChanged?.connect(this._update, this);
    this._inner.activeCellErrorChanged.connect((_, error) =>
      this._activeCellErrorChanged.emit(error)
    );
  }

  get available(): boolean {
    const notebook = this._tracker.currentWidget;
    return (
      !!notebook && notebook.isVisible && this._tracker.activeCell !== null
    );
  }

  /** Tell the code toolbars if availability changed. */
  refresh(): void {
    const available = this.available;
    if (available !== this._last) {
      this._last = available;
      this._availabilityChanged.emit(available);
    }
  }

  get activeCellError(): IActiveCellManager['activeCellError'] {
    return this._inner.activeCellError;
  }

  get availabilityChanged(): ISignal<this, boolean> {
    return this._availabilityChanged;
  }

  get activeCellErrorChanged(): ISignal<
    this,
    IActiveCellManager['activeCellError']
  > {
    return this._activeCellErrorChanged;
  }

  getContent(withError: boolean): ReturnType<IActiveCellManager['getContent']> {
    return withError
      ? this._inner.getContent(true)
      : this._inner.getContent(false);
  }

  insertAbove(content: string): void {
    this._inner.insertAbove(content);
  }

  insertBelow(content: string): void {
    this._inner.insertBelow(content);
  }

  replace(content: string): Promise<void> {
    return this._inner.replace(content);
  }

  private _update(): void {
    // After the shell and the tracker have both settled.
    requestAnimationFrame(() => this.refresh());
  }

  private readonly _tracker: INotebookTracker;
  private readonly _inner: ActiveCellManager;
  private _last = false;
  private readonly _availabilityChanged = new Signal<this, boolean>(this);
  private readonly _activeCellErrorChanged = new Signal<
    this,
    IActiveCellManager['activeCellError']
  >(this);
}

namespace ChatDocks {
  export interface IOptions {
    app: JupyterFrontEnd;
    tracker: INotebookTracker;
    rmRegistry: IRenderMimeRegistry;
    themeManager: IThemeManager | null;
  }
}

export const chatPanelPlugin: JupyterFrontEndPlugin<void> = {
  id: PluginIDs.chatPanel,
  description:
    'The chat panel of %chat_panel: an ipywidgets view docking @jupyter/chat in the right side area.',
  autoStart: true,
  requires: [IJupyterWidgetRegistry, IRenderMimeRegistry, INotebookTracker],
  optional: [IThemeManager],
  activate: (
    app: JupyterFrontEnd,
    registry: IJupyterWidgetRegistry,
    rmRegistry: IRenderMimeRegistry,
    tracker: INotebookTracker,
    themeManager: IThemeManager | null
  ): void => {
    const docks = new ChatDocks({ app, tracker, rmRegistry, themeManager });
    registry.registerWidget({
      name: WIDGET_MODULE,
      version: WIDGET_MODULE_VERSION,
      exports: {
        ChatPanelModel,
        ChatPanelView: createChatPanelView(docks)
      }
    });
  }
};
