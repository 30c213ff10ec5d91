"""ntkal: look-ahead deep active learning made feasible with the empirical neural tangent kernel.

Mohamadi, Bae & Sutherland, "Making Look-Ahead Active Learning Strategies Feasible with Neural
Tangent Kernels", NeurIPS 2022 (arXiv:2206.12569).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "ActiveLearner",
    "Lookahead",
    "empirical_ntk",
    "build_model",
    "load_dataset",
]


def __getattr__(name: str):
    # Lazy imports keep `import ntkal` (and `ntkal --version`) fast.
    if name == "ActiveLearner":
        from ntkal.learner import ActiveLearner

        return ActiveLearner
    if name == "Lookahead":
        from ntkal.lookahead import Lookahead

        return Lookahead
    if name == "empirical_ntk":
        from ntkal.kernels import empirical_ntk

        return empirical_ntk
    if name == "build_model":
        from ntkal.models import build_model

        return build_model
    if name == "load_dataset":
        from ntkal.data import load_dataset

        return load_dataset
    raise AttributeError(f"module 'ntkal' has no attribute {name!r}")
