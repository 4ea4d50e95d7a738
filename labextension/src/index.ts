import type { JupyterFrontEndPlugin } from '@jupyterlab/application';

import { metadataBridgePlugin } from './bridge';

const plugins: JupyterFrontEndPlugin<unknown>[] = [metadataBridgePlugin];

export default plugins;
