"""sandpool's matplotlib backend: figures become files, not windows.

Selected with MPLBACKEND=module://sandpool_mpl. plt.show() saves every open
figure into $SANDPOOL_PLOT_DIR as <run id>-<n>.<format> and closes it;
figures still open when the program (or a context's cell) ends are saved
too. Nothing is printed. The server sends the files back as artifacts.
"""

import atexit
import os

from matplotlib._pylab_helpers import Gcf
from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

FigureCanvas = FigureCanvasAgg
FigureManager = FigureManagerBase

_saved = 0


def flush():
    """Saves and closes every open figure."""
    global _saved
    managers = Gcf.get_all_fig_managers()
    if not managers:
        return
    directory = os.environ.get("SANDPOOL_PLOT_DIR", "/sandbox/outputs/plots")
    fmt = os.environ.get("SANDPOOL_PLOT_FORMAT", "png")
    run = os.environ.get("SANDPOOL_RUN_ID", "run")
    os.makedirs(directory, exist_ok=True)
    for manager in managers:
        _saved += 1
        path = os.path.join(directory, "%s-%03d.%s" % (run, _saved, fmt))
        manager.canvas.figure.savefig(path, format=fmt)
    Gcf.destroy_all()


def show(*args, **kwargs):
    flush()


atexit.register(flush)
