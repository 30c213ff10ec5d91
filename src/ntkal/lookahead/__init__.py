"""The trained network linearised at its weights, and closed-form look-ahead retraining.

Mohamadi, Bae & Sutherland, "Making Look-Ahead Active Learning Strategies Feasible with Neural
Tangent Kernels", NeurIPS 2022 (arXiv:2206.12569).

Around its trained parameters a network behaves like its first-order Taylor expansion, whose
infinite-time MSE gradient flow on a labelled set ``L`` is kernel regression with the empirical NTK
``Θ``. Adding one labelled point ``(x_j, y)`` to ``L`` then changes the predictions by a rank-one
(rank-``k`` for full block kernels) update of the kernel-regression solution, so "what would the
network predict if it were retrained with this point?" costs ``O(e k)`` per candidate instead of
one SGD run per candidate::

    K      = Θ(L, L) (+ ridge · mean(diag K) · I)
    f̄(X)   = f0(X) + Θ(X, L) K⁺ (Y_L − f0(L))
    Σ[E, J] = Θ(E, J) − Θ(E, L) K⁺ Θ(L, J)
    f^{(j,y)}(E) = f̄(E) + Σ[E, j] Σ_jj⁻¹ (y − f̄(x_j))

with ``K⁺`` the pseudo-inverse: gradient flow converges to the minimum-norm least-squares fit, so
when ``L`` outnumbers the kernel's rank (``kernel="last_layer"`` once n > width + 1, narrow
networks) a candidate whose features lie in L's span is not interpolated: it moves the
predictions by ``G[E, j] (1 + G_jj)⁻¹ (y − f̄(x_j))`` instead, with the leverage kernel
``G = Θ(·, L) K⁺² Θ(L, ·)`` (:mod:`ntkal.lookahead.span`, :mod:`ntkal.lookahead.cholesky`).

``C`` are the candidates (what can be queried: every unlabelled pool point by default) and ``E``
the evaluation set where output change is measured (``eval_size``: a seeded random sample of the
candidates, 5000 by default, or ``"all"``). Scalar kernels (pseudo-NTK, trace NTK, last-layer
kernel) are read as ``Θ ⊗ I_k``; full kernels keep their ``k × k`` blocks and ``Σ_jj`` is then a
``k × k`` matrix (solved, never inverted explicitly). All of it is float64.

Two engines implement one interface, :class:`Lookahead` (``iter_blocks`` yields
:class:`LookaheadBlock` s, ``condition`` is the sequential closed-form update, ``posterior_variance``
gives Σ_jj), built by its one factory :meth:`Lookahead.fit` from a model and
:class:`LookaheadSettings`; :func:`choose_engine` is the one place that decides which:

* :class:`DenseLookahead`: Σ over all candidates as one matrix, from one symmetric kernel call
  on ``[L; C]``. Used when ``(n + m)²`` float64 kernel entries fit ``max_memory`` and E is not
  much smaller than C (see :func:`choose_engine`).
* :class:`StreamingLookahead`: Σ[E, J] computed per block of candidates from cached per-example
  kernel factors of ``L`` and ``E`` (:class:`ntkal.kernels.Featuriser`) and dropped after
  scoring; memory ``O(e · b · p² + (n + q)² + (n + q) · e · p)`` plus features, with the block
  size ``b`` chosen from the budgets.
"""

from ntkal.lookahead.block import LookaheadBlock, eval_positions_for
from ntkal.lookahead.dense import DenseLookahead
from ntkal.lookahead.engine import ENGINES, Lookahead, choose_engine, dense_bytes, fit_lookahead
from ntkal.lookahead.settings import DEFAULT_BLOCK_MEMORY, DEFAULT_EVAL_SIZE, LookaheadSettings
from ntkal.lookahead.streaming import StreamingLookahead

__all__ = [
    "Lookahead",
    "LookaheadSettings",
    "DenseLookahead",
    "StreamingLookahead",
    "LookaheadBlock",
    "choose_engine",
    "dense_bytes",
    "fit_lookahead",
    "eval_positions_for",
    "ENGINES",
    "DEFAULT_EVAL_SIZE",
    "DEFAULT_BLOCK_MEMORY",
]
