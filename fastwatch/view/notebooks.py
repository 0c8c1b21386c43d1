"""Which notebook, if any, runs this kernel: the dashboard draws itself under a cell in Jupyter (JupyterLab,
Notebook 7, VS Code) and Colab; Kaggle's notebooks do not load the widget code of packages installed in them."""
from __future__ import annotations

import os
import sys


def in_notebook() -> bool:
    "Whether this code runs in a notebook's kernel, not in a script or a terminal console."
    shell = sys.modules['IPython'].get_ipython() if 'IPython' in sys.modules else None
    return shell is not None and hasattr(shell, 'kernel')


def notebook_host() -> str:
    "Where this kernel's notebook runs: 'colab', 'kaggle', or 'jupyter' (JupyterLab, Notebook 7, VS Code, …)."
    if 'google.colab' in sys.modules: return 'colab'
    if os.environ.get('KAGGLE_KERNEL_RUN_TYPE'): return 'kaggle'
    return 'jupyter'
