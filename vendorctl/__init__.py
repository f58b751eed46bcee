"""Operator command line: manage the catalog (and, later, replay cost exports) without SQL."""

import sys
from pathlib import Path

_LAYER = str(Path(__file__).resolve().parents[1] / "layers" / "shared")
if _LAYER not in sys.path:
    sys.path.insert(0, _LAYER)
