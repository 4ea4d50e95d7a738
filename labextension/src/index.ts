import type { JupyterFrontEndPlugin } from '@jupyterlab/application';

import { metadataBridgePlugin } from './bridge';
import { insertCellPlugin } from './insertCell';
import { chatPanelPlugin } from './panel';

const plugins: JupyterFrontEndPlugin<unknown>[] = [
  metadataBridgePlugin,
  chatPanelPlugin,
  insertCellPlugin
];

export default plugins;
