/**
 * The metadata bridge: the front-end end of the `jupyter_llmchat` comm.
 *
 * For each notebook it registers the comm target on the notebook's kernel (and
 * on the next one after a kernel change), answers the kernel's comm open with
 * `hello` (its path and in-memory record), and writes the kernel's records into
 * the notebook model, so they are saved with the user's next save: the whole
 * record (`set_metadata`), or after a turn only that turn (`append_turns`, or
 * `replace_exchange` for a cell run again), applied only onto the record it
 * follows (otherwise it asks for the whole record with `resync`). It tells the
 * kernel the notebook's order of cells (`order`: after the hello, when cells
 * move, are added or deleted, debounced, and at once before a cell runs), and
 * marks the cells the kernel says are `stale` (their answer was made on another
 * conversation above them) with a quiet badge: a class on the cell, the answer
 * itself is not rendered again. Every kernel message carries the path this notebook
 * said hello with; one carrying another path is for another notebook sharing
 * the kernel, and is ignored. The protocol: jupyter_llmchat/_bridge.py. A kernel that opened its comm before
 * this notebook connected to it (the notebook was closed and opened again, or
 * the page reloaded) does not open another: the bridge finds that comm with a
 * `comm_info_request` and says `hello` on it. Nothing here throws into the
 * kernel connection or makes it wait.
 */
import type {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import type { INotebookModel, NotebookPanel } from '@jupyterlab/notebook';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import type { Kernel, KernelMessage } from '@jupyterlab/services';
import type { JSONArray, JSONObject } from '@lumino/coreutils';
import { JSONExt } from '@lumino/coreutils';
import type { ISignal } from '@lumino/signaling';
import { Signal } from '@lumino/signaling';

import type {
  HelloMessage,
  OrderMessage,
  PathMessage,
  ResyncMessage
} from './protocol';
import {
  isAppendTurns,
  isChatRecord,
  isPlainObject,
  isReplaceExchange,
  staleCells
} from './protocol';
import { COMM_TARGET, ILLMChatBridge, METADATA_KEY, PluginIDs } from './tokens';

type CommTargetHandler = (
  comm: Kernel.IComm,
  msg: KernelMessage.ICommOpenMsg
) => void;

interface IPanelState {
  kernel: Kernel.IKernelConnection | null;
  comm: Kernel.IComm | null;
  /**
   * The path this notebook said hello with: the kernel's messages carry it,
   * and a message carrying another is for another notebook on the same
   * kernel. A rename sends the kernel the new one (`path`) and makes it this.
   */
  helloPath: string | null;
  /** Paths said before a rename: the kernel's messages sent before it knew. */
  formerPaths: Set<string>;
  /** The cells the kernel last said are stale. */
  stale: Set<string>;
  /** The order last sent (ids joined), so an unchanged one is not sent again. */
  sentOrder: string | null;
  orderTimer: ReturnType<typeof setTimeout> | null;
  readonly onCommOpen: CommTargetHandler;
}

/** The class of a cell whose recorded answer is stale (style/index.css). */
const STALE_CLASS = 'jp-llmchat-stale';
/** How long cell moves settle before their order is sent. */
const ORDER_DEBOUNCE_MS = 250;

// A restart disposes the connection's comms but keeps its comm targets.
const COMM_ENDING_STATUSES: ReadonlySet<Kernel.Status> = new Set<Kernel.Status>([
  'restarting',
  'autorestarting',
  'terminating',
  'dead'
]);

export class MetadataBridge implements ILLMChatBridge {
  get messageReceived(): ISignal<ILLMChatBridge, ILLMChatBridge.IMessageArgs> {
    return this._messageReceived;
  }

  getComm(panel: NotebookPanel): Kernel.IComm | null {
    const comm = this._states.get(panel)?.comm ?? null;
    return comm !== null && !comm.isDisposed ? comm : null;
  }

  /** Follow a notebook's kernels from now until the panel is disposed. */
  track(panel: NotebookPanel): void {
    if (panel.isDisposed || this._states.has(panel)) {
      return;
    }
    const state: IPanelState = {
      kernel: null,
      comm: null,
      helloPath: null,
      formerPaths: new Set<string>(),
      stale: new Set<string>(),
      sentOrder: null,
      orderTimer: null,
      onCommOpen: comm => this._onCommOpen(panel, state, comm)
    };
    this._states.set(panel, state);

    // The session context is disposed with the panel, which disconnects these.
    const sessionContext = panel.sessionContext;
    sessionContext.kernelChanged.connect((_, change) => {
      this._attach(panel, state, change.newValue);
    });
    sessionContext.statusChanged.connect((_, status) => {
      if (COMM_ENDING_STATUSES.has(status)) {
        state.comm = null;
      }
    });
    // The signal's value may carry a drive prefix; the hello says localPath.
    panel.context.pathChanged.connect(() => {
      this._onPathChanged(state, panel.context.localPath);
    });
    const onCells = () => {
      this._scheduleOrder(panel, state);
    };
    void panel.context.ready.then(() => {
      panel.model?.cells.changed.connect(onCells);
    });
    // Before a cell's execute request goes, the kernel gets the order it runs in.
    const onScheduled = (_: unknown, args: { notebook: unknown }) => {
      if (args.notebook === panel.content) {
        this._sendOrder(panel, state);
      }
    };
    NotebookActions.executionScheduled.connect(onScheduled);
    panel.disposed.connect(() => {
      NotebookActions.executionScheduled.disconnect(onScheduled);
      if (state.orderTimer !== null) {
        clearTimeout(state.orderTimer);
      }
      this._attach(panel, state, null);
      this._states.delete(panel);
    });

    this._attach(panel, state, sessionContext.session?.kernel ?? null);
  }

  private _attach(
    panel: NotebookPanel,
    state: IPanelState,
    kernel: Kernel.IKernelConnection | null
  ): void {
    if (state.kernel === kernel) {
      return;
    }
    // A no-op on a disposed connection.
    state.kernel?.removeCommTarget(COMM_TARGET, state.onCommOpen);
    state.kernel = kernel;
    state.helloPath = null;
    state.formerPaths.clear();
    state.comm = null;
    if (kernel !== null) {
      kernel.registerCommTarget(COMM_TARGET, state.onCommOpen);
      void this._reconnect(panel, state, kernel);
    }
  }

  /**
   * Join the comm the kernel opened at `%load_ext` before this connection
   * existed. Its messages are dropped by a connection that does not know the
   * comm, so without this the record would stop following the kernel.
   */
  private async _reconnect(
    panel: NotebookPanel,
    state: IPanelState,
    kernel: Kernel.IKernelConnection
  ): Promise<void> {
    try {
      const reply = await kernel.requestCommInfo({ target_name: COMM_TARGET });
      const content = reply.content;
      if (
        content.status !== 'ok' ||
        state.kernel !== kernel ||
        state.comm !== null ||
        kernel.isDisposed ||
        panel.isDisposed
      ) {
        return;
      }
      // The kernel keeps one such comm; a comm opened meanwhile is already known.
      const ids = Object.keys(content.comms).filter(
        id => content.comms[id].target_name === COMM_TARGET
      );
      if (ids.length === 0 || ids.some(id => kernel.hasComm(id))) {
        return;
      }
      this._onCommOpen(
        panel,
        state,
        kernel.createComm(COMM_TARGET, ids[ids.length - 1])
      );
    } catch (error) {
      // A kernel that is gone or restarting: its next %load_ext opens a comm.
      console.debug('jupyter-llmchat: no comm to rejoin', error);
    }
  }

  private _onCommOpen(
    panel: NotebookPanel,
    state: IPanelState,
    comm: Kernel.IComm
  ): void {
    // Returns nothing: a promise returned here would pause the kernel
    // connection's message processing until it settled.
    try {
      comm.onMsg = msg => {
        this._whenReady(panel, () => this._onCommMsg(panel, state, comm, msg));
      };
      comm.onClose = () => {
        if (state.comm === comm) {
          state.comm = null;
        }
      };
      state.comm = comm;
      this._whenReady(panel, () => this._sendHello(panel, state, comm));
    } catch (error) {
      console.error('jupyter-llmchat: could not open the comm', error);
    }
  }

  /** Run `fn` once the notebook is loaded, in call order, logging any error. */
  private _whenReady(panel: NotebookPanel, fn: () => void): void {
    panel.context.ready.then(fn).catch(error => {
      console.error('jupyter-llmchat: comm handler failed', error);
    });
  }

  private _sendHello(
    panel: NotebookPanel,
    state: IPanelState,
    comm: Kernel.IComm
  ): void {
    const model = panel.model;
    if (panel.isDisposed || comm.isDisposed || model === null) {
      return;
    }
    const hello: HelloMessage = {
      type: 'hello',
      path: panel.context.localPath,
      saved: !model.dirty,
      record: Private.readRecord(model)
    };
    state.helloPath = hello.path;
    state.formerPaths.clear();
    comm.send(hello);
    state.sentOrder = null;
    this._sendOrder(panel, state);
  }

  private _scheduleOrder(panel: NotebookPanel, state: IPanelState): void {
    if (state.orderTimer !== null) {
      clearTimeout(state.orderTimer);
    }
    state.orderTimer = setTimeout(() => {
      this._sendOrder(panel, state);
    }, ORDER_DEBOUNCE_MS);
  }

  /** The notebook's cell ids in order, to the kernel, if they changed. */
  private _sendOrder(panel: NotebookPanel, state: IPanelState): void {
    if (state.orderTimer !== null) {
      clearTimeout(state.orderTimer);
      state.orderTimer = null;
    }
    // A cell moved may be a new widget: its badge is set again.
    this._showStale(panel, state);
    const comm = state.comm;
    const model = panel.model;
    if (
      panel.isDisposed ||
      model === null ||
      comm === null ||
      comm.isDisposed ||
      state.helloPath === null
    ) {
      return;
    }
    const cells: string[] = [];
    for (let i = 0; i < model.cells.length; i++) {
      cells.push(model.cells.get(i).id);
    }
    const key = cells.join('\n');
    if (key === state.sentOrder) {
      return;
    }
    const message: OrderMessage = {
      type: 'order',
      path: state.helloPath,
      cells
    };
    try {
      comm.send(message);
      state.sentOrder = key;
    } catch (error) {
      console.warn('jupyter-llmchat: could not tell the kernel the order', error);
    }
  }

  /** The stale badge on the cells the kernel named, and on no other. */
  private _showStale(panel: NotebookPanel, state: IPanelState): void {
    if (panel.isDisposed) {
      return;
    }
    for (const cell of panel.content.widgets) {
      cell.toggleClass(STALE_CLASS, state.stale.has(cell.model.id));
    }
  }

  /**
   * Renamed or moved while open: tell the kernel, whose record then follows
   * the notebook (it keeps its record by the record's id, not by a path).
   */
  private _onPathChanged(state: IPanelState, path: string): void {
    const comm = state.comm;
    const from = state.helloPath;
    if (from === null || from === path || comm === null || comm.isDisposed) {
      return;
    }
    const message: PathMessage = { type: 'path', path, from };
    state.formerPaths.add(from);
    state.helloPath = path;
    try {
      comm.send(message);
    } catch (error) {
      console.warn('jupyter-llmchat: could not tell the kernel the new path', error);
    }
  }

  private _onCommMsg(
    panel: NotebookPanel,
    state: IPanelState,
    comm: Kernel.IComm,
    msg: KernelMessage.ICommMsgMsg
  ): void {
    const data = msg.content.data;
    if (panel.isDisposed || !isPlainObject(data)) {
      return;
    }
    // A kernel shared by two notebooks keeps one's record: the other ignores it.
    if (
      state.helloPath === null ||
      typeof data.path !== 'string' ||
      (data.path !== state.helloPath && !state.formerPaths.has(data.path))
    ) {
      return;
    }
    if (data.type === 'set_metadata') {
      this._setMetadata(panel, data);
    } else if (data.type === 'append_turns' || data.type === 'replace_exchange') {
      if (!this._appendTurns(panel, data)) {
        const resync: ResyncMessage = { type: 'resync', path: state.helloPath };
        comm.send(resync);
      }
    } else if (data.type === 'stale') {
      const cells = staleCells(data);
      if (cells !== null) {
        state.stale = new Set(cells);
        this._showStale(panel, state);
      }
    }
    this._messageReceived.emit({ panel, comm, data });
  }

  /**
   * Apply an update made of the turns after `from` (`append_turns`), or of an
   * exchange put in place of the turns `start` to `end` (`replace_exchange`):
   * only onto the record it follows (the session holds exactly `from`, or
   * `length`, turns, or is missing and that is 0). False when it does not
   * apply: the kernel then sends the whole record.
   */
  private _appendTurns(panel: NotebookPanel, data: JSONObject): boolean {
    const model = panel.model;
    let start: number, end: number, length: number;
    if (isAppendTurns(data)) {
      start = end = length = data.from;
    } else if (isReplaceExchange(data)) {
      ({ start, end, length } = data);
    } else {
      return false;
    }
    if (model === null) {
      return false;
    }
    const current = Private.readRecord(model);
    if (current === null || !isChatRecord(current)) {
      return false;
    }
    const sessions = isPlainObject(current.sessions) ? current.sessions : {};
    const session = sessions[data.session];
    let turns: JSONArray;
    if (session === undefined) {
      turns = [];
    } else if (isPlainObject(session) && Array.isArray(session.turns)) {
      turns = session.turns;
    } else {
      return false;
    }
    if (turns.length !== length) {
      return false;
    }
    const base = isPlainObject(session) ? session : {};
    const value: JSONObject = {
      ...current,
      sessions: {
        ...sessions,
        [data.session]: {
          ...base,
          provider: data.provider,
          system_prompt: data.system_prompt,
          turns: [...turns.slice(0, start), ...data.turns, ...turns.slice(end)]
        }
      },
      usage: data.usage
    };
    if (!JSONExt.deepEqual(current, value)) {
      model.setMetadata(METADATA_KEY, value);
    }
    return true;
  }

  private _setMetadata(panel: NotebookPanel, data: JSONObject): void {
    const model = panel.model;
    if (model === null) {
      return;
    }
    const value = data.value;
    if (value === null) {
      if (Private.readRecord(model) !== null) {
        model.deleteMetadata(METADATA_KEY);
      }
      return;
    }
    if (!isChatRecord(value)) {
      console.warn(
        'jupyter-llmchat: ignored a set_metadata whose value is not a version 1 record'
      );
      return;
    }
    // An unchanged record must not mark the notebook dirty.
    const current = Private.readRecord(model);
    if (current === null || !JSONExt.deepEqual(current, value)) {
      model.setMetadata(METADATA_KEY, value);
    }
  }

  private readonly _states = new Map<NotebookPanel, IPanelState>();
  private readonly _messageReceived = new Signal<
    ILLMChatBridge,
    ILLMChatBridge.IMessageArgs
  >(this);
}

namespace Private {
  export function readRecord(model: INotebookModel): JSONObject | null {
    const record: unknown = model.getMetadata(METADATA_KEY);
    return isPlainObject(record) ? record : null;
  }
}

export const metadataBridgePlugin: JupyterFrontEndPlugin<ILLMChatBridge> = {
  id: PluginIDs.metadataBridge,
  description:
    "Keeps the jupyter_llmchat record in the notebook's metadata, from the kernel's comm.",
  autoStart: true,
  requires: [INotebookTracker],
  provides: ILLMChatBridge,
  activate: (_: JupyterFrontEnd, tracker: INotebookTracker): ILLMChatBridge => {
    const bridge = new MetadataBridge();
    tracker.forEach(panel => bridge.track(panel));
    tracker.widgetAdded.connect((_, panel) => bridge.track(panel));
    return bridge;
  }
};
