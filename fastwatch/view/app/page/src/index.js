// The dashboard's page script, in place of Voila's JupyterLab front end: it connects to the kernel Voila started for
// the page (@jupyterlab/services: the protocol, reconnects) and, once the page's cells have run, loads the widgets'
// state from it and shows each cell's outputs where the template left them. Loaded from the template as the page starts
// streaming, so the browser fetches and runs it while the kernel runs the notebook.
import { CommsOverSubshells } from '@jupyterlab/services/lib/kernel/comm';
import { KernelConnection } from '@jupyterlab/services/lib/kernel/default';
import { ServerConnection } from '@jupyterlab/services/lib/serverconnection';
import * as base from '@jupyter-widgets/base';
import { ManagerBase } from '@jupyter-widgets/base-manager';
import * as controls from '@jupyter-widgets/controls';
import * as bokeh from '@bokeh/jupyter_bokeh/lib/widgets';
import { Widget } from '@lumino/widgets';

import '@jupyter-widgets/base/css/index.css';
import '@jupyter-widgets/controls/css/widgets.css';
import '@bokeh/jupyter_bokeh/style/index.css';
import './page.css';

const WIDGET_VIEW = 'application/vnd.jupyter.widget-view+json';
const CELL_OUTPUT = 'script[type="application/vnd.voila.cell-output+json"]';
const MODULES = { '@jupyter-widgets/base': base, '@jupyter-widgets/controls': controls, '@bokeh/jupyter_bokeh': bokeh };
const ANSI = /\x1b\[[0-9;]*m/g;

class PageManager extends ManagerBase {
  // No `context`, as under Voila's manager: jupyter_bokeh's views then send each document event at once, rather than
  // holding them while the kernel is busy.
  constructor(kernel) {
    super();
    this.kernel = kernel;
    kernel.registerCommTarget(this.comm_target_name, (comm, msg) => this.handle_comm_open(new base.shims.services.Comm(comm), msg));
  }

  async loadClass(className, moduleName, moduleVersion) {
    const module = MODULES[moduleName];
    if (!module || !module[className]) throw new Error(`Class ${className} not found in module ${moduleName}@${moduleVersion}`);
    return module[className];
  }

  async _create_comm(target_name, model_id, data, metadata, buffers) {
    const comm = this.kernel.createComm(target_name, model_id);
    if (data || metadata) comm.open(data, metadata, buffers);
    return new base.shims.services.Comm(comm);
  }

  async _get_comm_info() {
    const reply = await this.kernel.requestCommInfo({ target_name: this.comm_target_name });
    return reply.content.status === 'ok' ? reply.content.comms : {};
  }

  // Each chart is built in a task of its own, after a frame: the page and its first chart show before the others.
  async create_view(model, options) {
    if (model.get('_view_module') === '@bokeh/jupyter_bokeh') {
      this.turn = (this.turn || Promise.resolve()).then(() => new Promise((next) => requestAnimationFrame(() => setTimeout(next, 0))));
      await this.turn;
    }
    return super.create_view(model, options);
  }
}

function connect(config) {
  const token = new URLSearchParams(location.search).get('token') || '';
  const serverSettings = ServerConnection.makeSettings({ baseUrl: config.baseUrl, token, appendToken: true });
  // Comms on the kernel's main shell, as under Voila's page: Voila's server lets no subshell be asked for.
  return new KernelConnection({ model: { id: config.kernelId, name: config.kernelName || 'python3' }, serverSettings,
    commsOverSubshells: CommsOverSubshells.Disabled, handleComms: false });
}

// As Voila's page does: the kernel is shut down as the page goes away (`server.TabCloseHandler`).
function shutDownOnLeaving(config) {
  window.addEventListener('beforeunload', () => {
    const form = new FormData();
    form.append('_xsrf', (document.cookie.match(/\b_xsrf=([^;]*)\b/) || [])[1] || '');
    navigator.sendBeacon(`${config.baseUrl}voila/api/shutdown/${config.kernelId}`, form);
  });
}

function text(el, className, value) {
  const pre = document.createElement('pre');
  pre.className = className;
  pre.textContent = value;
  el.appendChild(pre);
}

async function render(manager, output, el) {
  const data = output.data || {};
  if (data[WIDGET_VIEW]) {
    const view = await manager.create_view(await manager.get_model(data[WIDGET_VIEW].model_id));
    const host = document.createElement('div');
    host.className = 'fw-widget';
    el.appendChild(host);
    Widget.attach(view.luminoWidget, host);
  } else if (output.output_type === 'stream') {
    text(el, `fw-stream fw-${output.name}`, output.text);
  } else if (output.output_type === 'error') {
    text(el, 'fw-error', (output.traceback || [`${output.ename}: ${output.evalue}`]).join('\n').replace(ANSI, ''));
  } else if (data['text/html']) {
    const div = document.createElement('div');
    div.innerHTML = data['text/html'];
    for (const old of div.querySelectorAll('script')) {  // scripts set through innerHTML do not run: replaced, they do
      const script = document.createElement('script');
      for (const { name, value } of old.attributes) script.setAttribute(name, value);
      script.textContent = old.textContent;
      old.replaceWith(script);
    }
    el.appendChild(div);
  } else if (data['text/plain']) {
    text(el, 'fw-text', data['text/plain']);
  }
}

async function main() {
  const config = JSON.parse(document.getElementById('jupyter-config-data').textContent);
  shutDownOnLeaving(config);
  // Connected at once, the comms' messages left alone (neither taken nor closed) until the page has streamed in, which
  // is once the kernel has run its cells. Only then does the page take the kernel's widgets, as Voila's page does: a
  // widget made while the cells ran would reach it without the widgets made before, which it holds.
  const kernel = connect(config);
  if (document.readyState === 'loading') await new Promise((done) => document.addEventListener('DOMContentLoaded', done));
  kernel.handleComms = true;
  const manager = new PageManager(kernel);
  window.fastwatchPage = { kernel, manager };
  const places = [...document.querySelectorAll(CELL_OUTPUT)].map((script) => {
    const el = document.createElement('div');
    el.className = 'fw-output';
    script.replaceWith(el);
    return [JSON.parse(script.textContent), el];
  });
  try { await manager._loadFromKernel(); } catch (e) { console.error('fastwatch: the widgets state did not load', e); }
  for (const [output, el] of places) {
    try { await render(manager, output, el); } catch (e) { console.error('fastwatch: an output failed to show', e); text(el, 'fw-error', String(e)); }
  }
  document.body.classList.add('fw-rendered');
}

main();
