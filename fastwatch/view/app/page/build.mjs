// Builds fastwatch-page.{js,css} from src/ into the folder given (`make page`: fastwatch/view/app/static/, in a copy
// of this folder, so that node_modules stays out of the package; tests/test_page.py builds it again and compares).
import * as esbuild from 'esbuild';

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
});
