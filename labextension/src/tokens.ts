import type { NotebookPanel } from '@jupyterlab/notebook';
import type { Kernel } from '@jupyterlab/services';
import type { JSONObject } from '@lumino/coreutils';
import { Token } from '@lumino/coreutils';
import type { ISignal } from '@lumino/signaling';

/** The npm package name, and the prefix of every id below. */
export const EXTENSION_ID = 'jupyter-llmchat';

/** Comm target the kernel opens at `%load_ext jupyter_llmchat` (DESIGN §7). */
export const COMM_TARGET = 'jupyter_llmchat';

/** Key of the chat record in the notebook's metadata (DESIGN §6). */
export const METADATA_KEY = 'jupyter_llmchat';

/** The ipywidgets module of the chat panel (`_model_module` of `ChatPanel`). */
export const WIDGET_MODULE = 'jupyter-llmchat';

/** Its version; the kernel asks for `^0.1.0`. */
export const WIDGET_MODULE_VERSION = '0.1.0';

/** Plugin ids. */
export namespace PluginIDs {
  export const metadataBridge = `${EXTENSION_ID}:metadata-bridge`;
  export const chatPanel = `${EXTENSION_ID}:panel`;
  export const insertCell = `${EXTENSION_ID}:insert-cell`;
}

/**
 * Finds the `jupyter_llmchat` comm of a notebook's kernel.
 *
 * The bridge owns each comm's `onMsg` and `onClose`: consumers must not
 * replace them; listen to `messageReceived` instead.
 */
export interface ILLMChatBridge {
  /**
   * The open comm of this notebook's current kernel, or null when there is no
   * kernel, the kernel has not loaded the extension, or it restarted since.
   */
  getComm(panel: NotebookPanel): Kernel.IComm | null;

  /**
   * Emitted for every message the kernel sends on a notebook's comm, after the
   * bridge has handled the ones it knows (`set_metadata`).
   */
  readonly messageReceived: ISignal<ILLMChatBridge, ILLMChatBridge.IMessageArgs>;
}

export namespace ILLMChatBridge {
  export interface IMessageArgs {
    readonly panel: NotebookPanel;
    readonly comm: Kernel.IComm;
    readonly data: JSONObject;
  }
}

export const ILLMChatBridge = new Token<ILLMChatBridge>(
  `${EXTENSION_ID}:ILLMChatBridge`,
  "Finds the jupyter_llmchat comm of a notebook's kernel and relays its messages."
);
