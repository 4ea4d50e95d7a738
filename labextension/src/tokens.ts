import type { NotebookPanel } from '@jupyterlab/notebook';
import type { Kernel } from '@jupyterlab/services';
import { Token } from '@lumino/coreutils';

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
}

/**
 * Finds the `jupyter_llmchat` comm of a notebook's kernel.
 *
 * The bridge owns each comm's `onMsg` and `onClose`: consumers must not
 * replace them.
 */
export interface ILLMChatBridge {
  /**
   * The open comm of this notebook's current kernel, or null when there is no
   * kernel, the kernel has not loaded the extension, or it restarted since.
   */
  getComm(panel: NotebookPanel): Kernel.IComm | null;
}

export const ILLMChatBridge = new Token<ILLMChatBridge>(
  `${EXTENSION_ID}:ILLMChatBridge`,
  "Finds the jupyter_llmchat comm of a notebook's kernel."
);
