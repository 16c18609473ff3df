"""spurious: find, validate, measure and remove harmful spurious features in image classifiers.

Pipeline stages (one module each): ``extract -> npca -> visualize -> label -> retrieve -> score -> fix``.
"""

from __future__ import annotations

from spurious._malloc import tune_malloc

__version__ = "0.1.0"

__all__ = ["__version__", "tune_malloc"]
