"""Every alternate execution of the reference model, each a swap of its blocks or modules decided by one table
(``table.py``) and checked against the reference by tests that run from that table:

* ``fuse``: inference forms with norms and scales folded away and oneDNN kernels on CPU (``inference.py``);
* ``use_custom_backward``: opt-in training functions with leaner backwards (``training.py``);
* ``quantize``: int8 inference on x86 CPUs (``int8.py``); ``export.py``: ONNX and ``torch.export``;
* ``prepare``: a loaded model made ready to run as asked, for the command line and the service;
* ``benchmark.py``: forward-pass timing.
"""

from .apply import fuse, is_fused, swap_modules, use_custom_backward
from .int8 import quantize
from .prepare import check_options, prepare
from .table import SWAPS, Swap

__all__ = [
    "SWAPS",
    "Swap",
    "check_options",
    "fuse",
    "is_fused",
    "prepare",
    "quantize",
    "swap_modules",
    "use_custom_backward",
]
