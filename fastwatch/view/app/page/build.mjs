// Builds fastwatch-page.{js,css} from src/ into the folder given (`make page`: fastwatch/view/app/static/, in a copy
// of this folder, so that node_modules stays out of the package; tests/test_page.py builds it again and compares).
import { readFile } from 'node:fs/promises';
import * as esbuild from 'esbuild';

// ipywidgets' manager asks the kernel for every widget's state on one control comm and gives it 4 s to answer
// (CONTROL_COMM_TIMEOUT) before asking again widget by widget, one request each. On a machine busy with a training and
// many pages the kernel answers later than that, and the hundreds of requests then take far longer still. The page's
// kernel runs ipywidgets 8, which answers: it is given as long as Voila gives a cell's output (server.OUTPUT_WAIT_SECONDS).
const CONTROL_COMM_WAIT_MS = 120000;
const controlCommWait = {
  name: 'control-comm-wait',
  setup(build) {
    build.onLoad({ filter: /@jupyter-widgets[\\/]base-manager[\\/]lib[\\/]manager-base\.js$/ }, async ({ path }) => {
      const source = await readFile(path, 'utf8');
      const waited = source.replace('CONTROL_COMM_TIMEOUT = 4000;', `CONTROL_COMM_TIMEOUT = ${CONTROL_COMM_WAIT_MS};`);
      if (waited === source) throw new Error(`${path}: no CONTROL_COMM_TIMEOUT = 4000 to lengthen`);
      return { contents: waited, loader: 'js' };
    });
  },
};

await esbuild.build({
  entryPoints: { 'fastwatch-page': 'src/index.js' },
  outdir: process.argv[2],
  bundle: true,
  minify: true,
  format: 'iife',
  target: 'es2020',
  legalComments: 'none',
  logLevel: 'warning',
  loader: { '.svg': 'dataurl', '.woff': 'dataurl', '.woff2': 'dataurl', '.ttf': 'dataurl', '.eot': 'dataurl', '.png': 'dataurl', '.gif': 'dataurl' },
  define: { 'process.env.NODE_ENV': '"production"', global: 'window' },
  // The widgets manager sanitizes HTML descriptions with sanitize-html's call; DOMPurify answers it (sanitize.js).
  alias: { 'sanitize-html': './src/sanitize.js' },
  plugins: [controlCommWait],
});
