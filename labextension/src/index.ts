import type { JupyterFrontEndPlugin } from '@jupyterlab/application';

import { metadataBridgePlugin } from './bridge';
import { chatPanelPlugin } from './panel';

const plugins: JupyterFrontEndPlugin<unknown>[] = [
  metadataBridgePlugin,
  chatPanelPlugin
];

export default plugins;
