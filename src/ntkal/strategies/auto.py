"""``auto``: ntkal's recommended strategy, one rule from the first labels to large budgets.

Low-budget active learning wants *representative* points (the network's uncertainty is not yet
worth trusting), high-budget active learning wants *uncertain* ones (Hacohen et al., ICML 2022;
Bae, Noh & Sutherland 2024). ``auto`` moves between the two with one criterion on the linearised
network, steered by an estimate of how reliable the network already is:

* **Criterion**: the greedy reduction of the *uncertainty-weighted* posterior variance on the
  evaluation set E, ``Σ_{i∈E} w_i Σ_ij² / Σ_jj`` (variance reduction, MacKay 1992, weighted as in
  information-density sampling, Settles & Craven 2008). With ``w ≡ 1`` it is label-free variance
  reduction, which the suite found never below random at low budget; as ``w`` concentrates on the
  points the network is unsure about it becomes a density-aware, batch-diverse uncertainty criterion.
* **Weights**: ``w_i = (1 − β) + β · u_i`` with ``u_i = exp(−m_i / mean(m))``, ``m_i`` the gap between
  the top two reference outputs at ``x_i`` (scale-free: the same for MSE-trained outputs and
  cross-entropy logits).
* **Reliability β**: the chance-corrected leave-one-out accuracy of the linearised network on the
  labelled set, ``β = clip((acc_LOO − 1/k) / (1 − 1/k), 0, 1)``, in closed form from one kernel
  solve on L (``r_i^{LOO} = (K⁻¹R)_i / (K⁻¹)_ii``, the classic kernel-regression identity), so it
  needs no held-out labels. A network at chance gets pure variance reduction; a network that
  predicts its own labels well gets uncertainty-weighted selection.
* **Selection**: greedy by default (each pick conditions the linearised network before the next, so
  a batch does not spend itself on one dense region); in sequential mode every true label conditions
  it. The weights come from the reference predictions (the trained network's outputs; greedy
  batches add what the pseudo-labels taught), and β is computed once per query or session.

The LOO solve uses its own Θ(L, L) (the pseudo-NTK unless the strategy's kernel is scalar), about
``n² P`` work next to the look-ahead's ``(n + e) m P``.

References
----------
MacKay, Neural Computation 1992; Settles & Craven, EMNLP 2008; Mohamadi, Bae & Sutherland,
NeurIPS 2022; Bae, Noh & Sutherland, "Uncertainty Herding", 2024.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ntkal.lookahead import LookaheadBlock
from ntkal.strategies.base import QueryContext
from ntkal.strategies.lookahead import LookaheadStrategy
from ntkal.strategies.output_change import own_variance

__all__ = ["Auto", "loo_reliability", "uncertainty_weights"]

_F64 = torch.float64


def loo_reliability(
    theta_ll: torch.Tensor,
    f0_labelled: torch.Tensor,
    y_labelled: torch.Tensor,
    num_classes: int,
    ridge: float = 1e-6,
) -> tuple[float, float]:
    """(β, LOO accuracy) of kernel regression on the labelled residuals, in closed form.

    ``theta_ll`` is the scalar kernel Θ(L, L) ``(n, n)``, ``f0_labelled`` the network's outputs on L
    ``(n, k)``. A relative ridge keeps the solve defined when Θ(L, L) is singular.
    """
    n = int(theta_ll.shape[0])
    if n < 2:
        return 0.0, 0.0
    k_mat = theta_ll.to(_F64)
    scale = float(k_mat.diagonal().mean().clamp_min(1e-300))
    k_mat = k_mat + ridge * scale * torch.eye(n, dtype=_F64, device=k_mat.device)
    targets = torch.nn.functional.one_hot(y_labelled.long(), num_classes).to(_F64)
    resid = targets - f0_labelled.to(_F64)
    inv = torch.linalg.inv(k_mat)
    alpha = inv @ resid
    loo_pred = targets - alpha / inv.diagonal()[:, None]
    acc = float((loo_pred.argmax(dim=1) == y_labelled.long()).to(_F64).mean())
    chance = 1.0 / num_classes
    beta = float(np.clip((acc - chance) / (1.0 - chance), 0.0, 1.0))
    return beta, acc


def uncertainty_weights(ref_eval: torch.Tensor, beta: float) -> torch.Tensor:
    """``(1 − β) + β · exp(−m / mean(m))`` per point of E, ``m`` the top-two output gap."""
    if ref_eval.shape[1] < 2 or beta <= 0.0:
        return torch.ones(ref_eval.shape[0], dtype=_F64, device=ref_eval.device)
    top2 = ref_eval.to(_F64).topk(2, dim=1).values
    gap = top2[:, 0] - top2[:, 1]
    mean = float(gap.mean())
    u = torch.exp(-gap / mean) if mean > 0 else torch.ones_like(gap)
    return (1.0 - beta) + beta * u


class Auto(LookaheadStrategy):
    """Recommended default: uncertainty-weighted variance reduction, weighted by reliability.

    See the module docstring for the rule. Parameters are those of
    :class:`ntkal.strategies.lookahead.LookaheadStrategy`; ``selection`` defaults to ``"greedy"``.
    """

    name = "auto"
    #: Σ and the trained network's outputs only: proposals do not depend on the labels.
    proposals_use_labels = False
    #: Scalar kernels: Σ[E, J]² and one product, two float64 values per pair.
    scalar_score_bytes_per_pair = 16.0

    def __init__(self, selection: str = "greedy", **settings: Any) -> None:
        super().__init__(selection=selection, **settings)
        self.reliability = 0.0
        self.loo_accuracy = 0.0
        self._weights_cache: tuple | None = None  # ((ref_eval, version, β), weights)

    def prepare(self, context: QueryContext) -> None:
        """β from the closed-form leave-one-out accuracy on L (:func:`loo_reliability`), once per
        query or session."""
        from ntkal.kernels import empirical_ntk
        from ntkal.strategies.forward_passes import evaluating

        if int(context.x_labelled.shape[0]) < 2:  # no leave-one-out without two labels
            self.reliability, self.loo_accuracy = 0.0, 0.0
            return
        kind = self.kernel if self.kernel in ("pseudo", "trace", "last_layer") else "pseudo"
        with evaluating(context.model, context.device) as model:
            theta, f_l, _ = empirical_ntk(model, context.x_labelled, kind=kind, return_outputs=True)
        self.reliability, self.loo_accuracy = loo_reliability(
            theta, f_l, context.y_labelled, context.num_classes
        )

    def _weights(self, ref_eval: torch.Tensor) -> torch.Tensor:
        """:func:`uncertainty_weights` of ``ref_eval``, computed once per scoring pass (every
        block of a pass gets the same ``ref_eval``; a top-2 over E per block costs as much as
        the block's own arithmetic in a sequential step)."""
        key = (ref_eval, ref_eval._version, self.reliability)
        cached = self._weights_cache
        if cached is not None and cached[0][0] is key[0] and cached[0][1:] == key[1:]:
            return cached[1]
        w = uncertainty_weights(ref_eval, self.reliability)
        self._weights_cache = (key, w)
        return w

    def score_block(
        self, block: LookaheadBlock, ref_eval: torch.Tensor, ref_cand: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        w = self._weights(ref_eval).to(block.cov.device)
        cov = block.cov.to(_F64)
        if block.pivot_evecs is None:
            score = (cov.square() @ w) / block.pivot_evals.to(_F64)
        else:
            proj = cov @ block.pivot_evecs.to(_F64).unsqueeze(1)  # (b, e, k, k)
            per_point = (proj**2).sum(dim=2) / block.pivot_evals.to(_F64)[:, None, :]
            score = (per_point.sum(dim=2) * w[None, :]).sum(dim=1)
        return score.cpu().numpy(), own_variance(block).cpu().numpy()

    def query(self, context: QueryContext, budget: int):
        result = super().query(context, budget)
        result.info.update(reliability=self.reliability, loo_accuracy=self.loo_accuracy)
        return result
