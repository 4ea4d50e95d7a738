/**
 * `%%chat --insert`: the kernel's `insert_cell` message (DESIGN §3), an
 * upsert tied to the asking cell's id. The code goes into the code cell below
 * the asking cell that an earlier `insert_cell` made for it (marked in its
 * metadata), or into a new code cell right below the asking cell; so a cell
 * asked again leaves one inserted cell with the new code, not a second one.
 *
 * The bridge (bridge.ts) filters the kernel's messages by notebook and relays
 * them on `messageReceived`; this plugin only listens there. The code is model
 * output: it becomes a cell's source (text), never run or rendered here.
 */
import type {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import type { NotebookPanel } from '@jupyterlab/notebook';

import { isInsertCell, isPlainObject } from './protocol';
import type { InsertCellMessage } from './protocol';
import { ILLMChatBridge, METADATA_KEY, PluginIDs } from './tokens';

/** The cell metadata field naming the cell whose answer a cell holds. */
export const INSERTED_BY = 'inserted_by';

/**
 * Put the message's code in its place; false when the asking cell is not in
 * the notebook (deleted meanwhile): then nothing changes.
 */
export function upsertCode(
  panel: NotebookPanel,
  message: InsertCellMessage
): boolean {
  const notebook = panel.model?.sharedModel;
  if (notebook === undefined) {
    return false;
  }
  const cells = notebook.cells;
  const at = cells.findIndex(cell => cell.id === message.cell);
  if (at < 0) {
    return false;
  }
  const mine = cells.findIndex(
    (cell, i) => i > at && insertedBy(cell.getMetadata(METADATA_KEY)) === message.cell
  );
  if (mine >= 0 && cells[mine].cell_type === 'code') {
    cells[mine].setSource(message.source);
    return true;
  }
  notebook.insertCell(at + 1, {
    cell_type: 'code',
    source: message.source,
    metadata: { [METADATA_KEY]: { [INSERTED_BY]: message.cell } }
  });
  return true;
}

function insertedBy(meta: unknown): string | null {
  const value = isPlainObject(meta) ? meta[INSERTED_BY] : undefined;
  return typeof value === 'string' ? value : null;
}

export const insertCellPlugin: JupyterFrontEndPlugin<void> = {
  id: PluginIDs.insertCell,
  description:
    "Puts a %%chat --insert answer's code into the cell below the asking cell.",
  autoStart: true,
  requires: [ILLMChatBridge],
  activate: (_: JupyterFrontEnd, bridge: ILLMChatBridge): void => {
    bridge.messageReceived.connect((_, { panel, data }) => {
      if (!isInsertCell(data)) {
        return;
      }
      if (!upsertCode(panel, data)) {
        console.warn(
          'jupyter-llmchat: --insert: the asking cell is no longer in the notebook'
        );
      }
    });
  }
};
