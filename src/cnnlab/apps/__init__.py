"""The applications of 8.6 on a trained network's features, one module each, above
:mod:`cnnlab.models` and :mod:`cnnlab.train`, below :mod:`cnnlab.cli`:

- :mod:`cnnlab.apps.boxes`: box IoU, non-maximum suppression, and mAP through pycocotools;
- :mod:`cnnlab.apps.retrieval`: content-based image retrieval on neural codes (8.6.1), FAISS;
- :mod:`cnnlab.apps.localize`: a classification head plus a regression head (8.6.2);
- :mod:`cnnlab.apps.fully_conv`: fully connected layers as convolutions, sliding windows in
  one pass (8.6.3);
- :mod:`cnnlab.apps.detect`: detection by sliding windows or region proposals (8.6.3).

The heavy libraries (faiss, OpenCV, pycocotools) are the optional extra ``cnnlab[apps]``;
each module imports them where they are used and says how to install them when missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from cnnlab.errors import CnnlabError

EXTRA = "pip install -c constraints.txt -e '.[apps]'"   # what installs the extra


def requires(module: str, purpose: str) -> ModuleType:
    """Import ``module`` of the extra ``cnnlab[apps]`` (``"faiss"``, ``"cv2"``,
    ``"pycocotools.cocoeval"``); missing, a one-line error that says what needs it and how to
    install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise CnnlabError(f"{purpose} needs {module.partition('.')[0]} ({err}); install the "
                          f"applications' extra: {EXTRA}") from None
