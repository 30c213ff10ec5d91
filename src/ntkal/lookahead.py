"""The trained network linearised at its weights, and closed-form look-ahead retraining.

Mohamadi, Bae & Sutherland, "Making Look-Ahead Active Learning Strategies Feasible with Neural
Tangent Kernels", NeurIPS 2022 (arXiv:2206.12569).

Around its trained parameters a network behaves like its first-order Taylor expansion, whose
infinite-time MSE gradient flow on a labelled set ``L`` is kernel regression with the empirical NTK
``Θ``. Adding one labelled point ``(x_j, y)`` to ``L`` then changes the predictions on the candidate
set ``S`` by a rank-one (rank-``k`` for full block kernels) update of the kernel-regression solution,
so "what would the network predict if it were retrained with this point?" costs ``O(m k)`` per
candidate instead of one SGD run per candidate::

    K      = Θ(L, L) (+ ridge · mean(diag K) · I, + jitter if Cholesky fails)
    f̄(S)   = f0(S) + Θ(S, L) K⁻¹ (Y_L − f0(L))
    Σ      = Θ(S, S) − Θ(S, L) K⁻¹ Θ(L, S)
    f^{(j,y)}(S) = f̄(S) + Σ[:, j] Σ_jj⁻¹ (y − f̄(x_j))

Scalar kernels (``n × n``: pseudo-NTK, trace NTK, last-layer kernel) are read as ``Θ ⊗ I_k``;
full kernels (``n × n × k × k``) keep their ``k × k`` blocks and ``Σ_jj`` is then a ``k × k``
matrix (solved, never inverted explicitly).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

__all__ = ["Lookahead", "LookaheadBlock"]

_DTYPE = torch.float64
#: Default memory budget (bytes) for one chunk of batched look-ahead predictions.
DEFAULT_CHUNK_BYTES = 256 * 2**20

LabelLike = Union[int, np.integer, Sequence[float], np.ndarray, torch.Tensor]


def _as_f64(x, name: str, device=None) -> torch.Tensor:
    t = torch.as_tensor(x)
    if not torch.is_floating_point(t):
        t = t.to(_DTYPE)
    t = t.to(dtype=_DTYPE, device=device)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _flatten_blocks(theta: torch.Tensor) -> torch.Tensor:
    """``(a, b, k, k)`` block kernel -> ``(a k, b k)`` matrix indexed by (point, class)."""
    a, b, k, _ = theta.shape
    return theta.permute(0, 2, 1, 3).reshape(a * k, b * k)


def _robust_cholesky(k_mat: torch.Tensor, scale: float, max_tries: int = 10
                     ) -> tuple[torch.Tensor, float]:
    """Cholesky factor of ``k_mat``, adding ``jitter · I`` (growing ×10) when it is not numerically
    positive definite. Returns the factor and the absolute jitter added (0.0 if none)."""
    chol, info = torch.linalg.cholesky_ex(k_mat)
    if int(info) == 0:
        return chol, 0.0
    eye = torch.eye(k_mat.shape[0], dtype=k_mat.dtype, device=k_mat.device)
    jitter = 1e-10 * scale
    for _ in range(max_tries):
        chol, info = torch.linalg.cholesky_ex(k_mat + jitter * eye)
        if int(info) == 0:
            return chol, jitter
        jitter *= 10.0
    raise torch.linalg.LinAlgError(
        f"kernel matrix Θ(L, L) is not positive definite even with jitter {jitter / 10:.3g} "
        f"({jitter / 10 / scale:.1g} × mean diagonal); check the kernel for NaNs or use ridge > 0"
    )


@dataclass
class LookaheadBlock:
    """What a look-ahead criterion needs about a block ``J`` of candidates, and nothing more.

    The engine (:class:`Lookahead`) yields these from :meth:`Lookahead.iter_blocks`; acquisition
    criteria (MLMOC's flip / norm / expected scores, EER, EMOC, variance reduction) are functions of
    one block, so they do not depend on how the engine stores or streams Σ.

    ``E`` is the evaluation set, where output change is measured (the candidates themselves unless
    the engine was given a separate one).

    Attributes
    ----------
    positions : Tensor
        Candidate positions ``(b,)`` (int64) of this block.
    cov : Tensor
        Σ[E, J]: ``(b, e)`` for scalar kernels (read as ``⊗ I_k``), ``(b, e, k, k)`` for full
        blocks (``cov[t, i]`` is the ``k × k`` block Σ[x_i, x_{J_t}]).
    pivot_evals, pivot_evecs : Tensor
        Σ_jj after the floor clamp: scalar kernels give ``(b,)`` values and ``pivot_evecs=None``;
        full blocks give eigenvalues ``(b, k)`` and eigenvectors ``(b, k, k)``.
    f_bar_eval, f_bar_cand : Tensor
        f̄ on E ``(e, k)`` and on the block ``(b, k)`` (current, after any conditioning).
    f0_eval, f0_cand : Tensor
        The trained network's outputs on E ``(e, k)`` and on the block ``(b, k)``.
    """

    positions: torch.Tensor
    cov: torch.Tensor
    pivot_evals: torch.Tensor
    pivot_evecs: Optional[torch.Tensor]
    f_bar_eval: torch.Tensor
    f_bar_cand: torch.Tensor
    f0_eval: torch.Tensor
    f0_cand: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.positions.shape[0])

    @property
    def block(self) -> bool:
        return self.pivot_evecs is not None

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """``Σ_jj⁻¹ rhs`` per candidate, ``rhs`` ``(b, k)``."""
        if self.pivot_evecs is None:
            return rhs / self.pivot_evals.unsqueeze(1)
        v = self.pivot_evecs
        coef = (v.transpose(1, 2) @ rhs.unsqueeze(2)).squeeze(2) / self.pivot_evals
        return (v @ coef.unsqueeze(2)).squeeze(2)

    def delta(self, targets: torch.Tensor) -> torch.Tensor:
        """Change of f̄ on E, ``(b, e, k)``, after retraining with ``(x_j, targets_j)`` added;
        ``targets`` ``(b, k)`` (one-hot rows for class labels)."""
        coef = self.solve(targets.to(self.f_bar_cand.dtype) - self.f_bar_cand)      # (b, k)
        if self.pivot_evecs is None:
            return self.cov.unsqueeze(2) * coef.unsqueeze(1)
        return (self.cov @ coef[:, None, :, None]).squeeze(3)

    def retrained(self, targets: torch.Tensor) -> torch.Tensor:
        """f^{(j,y)}(E) ``(b, e, k)``: f̄ on E plus :meth:`delta`."""
        return self.f_bar_eval.unsqueeze(0) + self.delta(targets)


class Lookahead:
    """The network linearised at its trained weights, with closed-form look-ahead retraining.

    Build it with :meth:`fit` (computes the empirical NTK of a model) or :meth:`from_kernels`
    (precomputed kernels). All linear algebra is done in float64.

    Parameters
    ----------
    theta_ll, theta_sl, theta_ss : Tensor
        Kernel blocks Θ(L, L) ``(n, n)``, Θ(S, L) ``(m, n)``, Θ(S, S) ``(m, m)`` for a scalar kernel
        (read as ``Θ ⊗ I_k``), or ``(n, n, k, k)``, ``(m, n, k, k)``, ``(m, m, k, k)`` for full blocks.
    f0_labelled, f0_candidates : Tensor
        Network outputs on L ``(n, k)`` and S ``(m, k)`` at the trained weights.
    y_labelled_onehot : Tensor
        Regression targets of L, ``(n, k)`` (one-hot for classification).
    ridge : float
        Relative ridge: ``K = Θ(L, L) + ridge · mean(diag Θ(L, L)) · I``. It regularises the
        labelled-set solve only; a look-ahead point is fitted exactly, as gradient flow would.
    eps : float
        Relative floor for ``Σ_jj``: values (eigenvalues, for blocks) below
        ``eps · mean(diag Σ)`` are clamped there, so near-duplicate candidates give finite,
        small look-ahead changes instead of NaN.
    chunk_size : int, optional
        Candidates per chunk in batched look-ahead; default from a 256 MiB budget.

    Attributes
    ----------
    jitter : float
        Absolute diagonal jitter added to ``K`` for its Cholesky factorisation (0.0 if none).
    conditioned : list of int
        Candidates conditioned on so far by :meth:`condition`, in order.
    num_clamped : int
        Unconditioned candidates whose ``Σ_jj`` is currently clamped.

    References
    ----------
    Mohamadi, Bae & Sutherland, NeurIPS 2022, Sec. 3 (look-ahead via the linearised network).
    """

    def __init__(self, theta_ll, theta_sl, theta_ss, f0_labelled, f0_candidates,
                 y_labelled_onehot, *, ridge: float = 0.0, eps: float = 1e-6,
                 chunk_size: Optional[int] = None, kernel: Optional[str] = None) -> None:
        theta_ll = torch.as_tensor(theta_ll)
        device = theta_ll.device
        theta_ll = _as_f64(theta_ll, "theta_ll", device)
        theta_sl = _as_f64(theta_sl, "theta_sl", device)
        theta_ss = _as_f64(theta_ss, "theta_ss", device)
        f0_l = _as_f64(f0_labelled, "f0_labelled", device)
        f0_s = _as_f64(f0_candidates, "f0_candidates", device)
        y_l = _as_f64(y_labelled_onehot, "y_labelled_onehot", device)
        if f0_s.ndim != 2:
            raise ValueError(f"f0_candidates must be (m, k), got shape {tuple(f0_s.shape)}")
        m, k = f0_s.shape
        n = int(f0_l.shape[0]) if f0_l.ndim >= 1 else 0
        f0_l = f0_l.reshape(n, k) if f0_l.numel() == 0 else f0_l
        y_l = y_l.reshape(n, k) if y_l.numel() == 0 else y_l
        if f0_l.shape != (n, k) or y_l.shape != (n, k):
            raise ValueError(
                f"f0_labelled {tuple(f0_l.shape)} and y_labelled_onehot {tuple(y_l.shape)} must "
                f"both be (n, k) with k = {k} (the width of f0_candidates)")
        if theta_ss.ndim == 2:
            block = False
            expect = {"theta_ll": (n, n), "theta_sl": (m, n), "theta_ss": (m, m)}
        elif theta_ss.ndim == 4:
            block = True
            expect = {"theta_ll": (n, n, k, k), "theta_sl": (m, n, k, k), "theta_ss": (m, m, k, k)}
        else:
            raise ValueError(f"theta_ss must be (m, m) or (m, m, k, k), got {tuple(theta_ss.shape)}")
        for name, t in (("theta_ll", theta_ll), ("theta_sl", theta_sl), ("theta_ss", theta_ss)):
            if name == "theta_ll" and n == 0 and t.numel() == 0:
                continue
            if tuple(t.shape) != expect[name]:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {expect[name]}")
        if ridge < 0 or not math.isfinite(ridge):
            raise ValueError(f"ridge must be finite and >= 0, got {ridge}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")

        self.kernel = kernel if kernel is not None else ("full" if block else "scalar")
        self.block = block
        self.num_labelled = n
        self.num_candidates = m
        self.num_classes = k
        self.ridge = float(ridge)
        self.eps = float(eps)
        self.chunk_size = chunk_size
        self.device = device
        self.f0_labelled = f0_l
        self.f0_candidates = f0_s
        self.conditioned: list[int] = []
        self._conditioned_mask = torch.zeros(m, dtype=torch.bool, device=device)
        self._clamp_warned = False
        p = k if block else 1
        self._p = p

        tss = _flatten_blocks(theta_ss) if block else theta_ss
        tss = 0.5 * (tss + tss.T)
        self._kss_mean_diag = float(tss.diagonal().mean()) if m > 0 else 0.0
        self.jitter = 0.0
        if n == 0:
            self._f_bar = f0_s.clone()
            sigma = tss.clone()
        else:
            tll = _flatten_blocks(theta_ll) if block else theta_ll
            tsl = _flatten_blocks(theta_sl) if block else theta_sl
            k_mat = 0.5 * (tll + tll.T)
            scale = float(k_mat.diagonal().mean())
            if not scale > 0:
                scale = 1.0
            if self.ridge > 0:
                k_mat = k_mat + self.ridge * scale * torch.eye(
                    k_mat.shape[0], dtype=_DTYPE, device=device)
            chol, self.jitter = _robust_cholesky(k_mat, scale)
            if self.jitter > 0:
                warnings.warn(
                    f"Θ(L, L) was not numerically positive definite; added jitter "
                    f"{self.jitter:.3g} ({self.jitter / scale:.1g} × its mean diagonal) to the "
                    "diagonal before the Cholesky factorisation", RuntimeWarning, stacklevel=3)
            resid = y_l - f0_l                                            # (n, k)
            resid = resid.reshape(n * k, 1) if block else resid           # (n p, k / p)
            v = torch.linalg.solve_triangular(chol, tsl.T, upper=False)   # L⁻¹ Θ(L, S)
            w = torch.linalg.solve_triangular(chol, resid, upper=False)   # L⁻¹ R
            self._f_bar = f0_s + (v.T @ w).reshape(m, k)
            sigma = tss - v.T @ v
        self._sigma = 0.5 * (sigma + sigma.T)
        self._refresh_pivots()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_kernels(cls, theta_ll, theta_sl, theta_ss, f0_labelled, f0_candidates,
                     y_labelled_onehot, *, ridge: float = 0.0, eps: float = 1e-6,
                     chunk_size: Optional[int] = None) -> "Lookahead":
        """Build from precomputed kernel blocks (see the class docstring for shapes)."""
        return cls(theta_ll, theta_sl, theta_ss, f0_labelled, f0_candidates, y_labelled_onehot,
                   ridge=ridge, eps=eps, chunk_size=chunk_size)

    @classmethod
    def fit(cls, model: nn.Module, x_labelled: torch.Tensor, y_labelled: torch.Tensor,
            x_candidates: torch.Tensor, *, num_classes: Optional[int] = None,
            kernel: str = "pseudo", ridge: float = 0.0, implementation: str = "auto",
            chunk_size: Optional[int] = None, progress: bool = False, eps: float = 1e-6,
            max_memory: Optional[int] = None) -> "Lookahead":
        """Linearise ``model`` at its current weights on ``L ∪ S`` and prepare look-ahead.

        One symmetric :func:`ntkal.kernels.empirical_ntk` call on the concatenation ``[L; S]``
        gives Θ(L, L), Θ(S, L), Θ(S, S) and the outputs ``f0`` at once.

        Parameters
        ----------
        model : nn.Module
            Trained network returning logits ``(n, k)``; its kernel is taken in eval mode.
        x_labelled, y_labelled : Tensor
            Labelled inputs and int64 class labels (or ``(n, k)`` float regression targets).
        x_candidates : Tensor
            Candidates ``S`` to look ahead on.
        num_classes : int, optional
            Checked against the model's output width (inferred from it when omitted).
        kernel : {"pseudo", "trace", "full", "last_layer"}
            eNTK variant; the pseudo-NTK is the paper's default.
        ridge, eps, chunk_size
            As in the class docstring.
        implementation, max_memory, progress
            Passed to :func:`ntkal.kernels.empirical_ntk`.

        Returns
        -------
        Lookahead
        """
        from ntkal.kernels import empirical_ntk

        try:
            dev = next(model.parameters()).device
        except StopIteration:  # pragma: no cover - parameter-free model
            dev = torch.device("cpu")
        x_l = torch.as_tensor(x_labelled)
        x_s = torch.as_tensor(x_candidates)
        n = int(x_l.shape[0])
        x = torch.cat([x_l.to(dev), x_s.to(dev, dtype=x_l.dtype)], dim=0)
        kw = dict(kind=kernel, implementation=implementation, dtype=_DTYPE, return_outputs=True)
        if progress:
            kw["progress"] = True
        if max_memory is not None:
            kw["max_memory"] = max_memory
        theta, f, _ = empirical_ntk(model, x, **kw)
        f = f.detach().to(_DTYPE)
        k = int(f.shape[1])
        if num_classes is not None and int(num_classes) != k:
            raise ValueError(f"num_classes={num_classes} but the model outputs {k} values")
        y = torch.as_tensor(y_labelled).to(f.device)
        if y.ndim == 1:
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
                raise ValueError(f"labels must lie in [0, {k}), got range "
                                 f"[{int(y.min())}, {int(y.max())}]")
            y = torch.nn.functional.one_hot(y.long(), k).to(_DTYPE)
        theta = theta.detach()
        lookahead = cls(theta[:n, :n], theta[n:, :n], theta[n:, n:], f[:n], f[n:], y,
                        ridge=ridge, eps=eps, chunk_size=chunk_size, kernel=kernel)
        return lookahead

    # ------------------------------------------------------------------ pivots (Σ_jj)
    def _floor(self) -> float:
        diag = self._sigma.diagonal()
        live = diag.view(self.num_candidates, self._p)[~self._conditioned_mask] \
            if self.num_candidates else diag
        scale = float(live.mean()) if live.numel() else 0.0
        if not (scale > 0 and math.isfinite(scale)):
            scale = self._kss_mean_diag if self._kss_mean_diag > 0 else 1.0
        return self.eps * scale

    def _refresh_pivots(self) -> None:
        """Clamp ``Σ_jj`` (eigenvalues of the k×k blocks) to ``eps · mean(diag Σ)``; cache what
        the look-ahead solves need, and warn (once per object) when something was clamped."""
        m, p = self.num_candidates, self._p
        floor = self._floor()
        self._pivot_floor = floor
        if not self.block:
            d = self._sigma.diagonal().clone()
            clamped = d <= floor
            self._pivot = torch.where(clamped, torch.full_like(d, floor), d)
        else:
            s4 = self._sigma.view(m, p, m, p)
            idx = torch.arange(m, device=self.device)
            blocks = s4[idx, :, idx, :]                                   # (m, k, k)
            blocks = 0.5 * (blocks + blocks.transpose(1, 2))
            evals, evecs = torch.linalg.eigh(blocks)
            clamped = (evals <= floor).any(dim=1)
            self._pivot_evals = evals.clamp_min(floor)
            self._pivot_evecs = evecs
        self._clamped = clamped & ~self._conditioned_mask
        count = int(self._clamped.sum())
        if count and not self._clamp_warned:
            self._clamp_warned = True
            warnings.warn(
                f"{count} candidate(s) have look-ahead variance Σ_jj <= {self.eps:g} × mean(diag Σ) "
                "(near-duplicates of labelled or other candidates, or cancellation); clamped to that "
                "floor so their look-ahead scores stay finite", RuntimeWarning, stacklevel=3)

    @property
    def num_clamped(self) -> int:
        return int(self._clamped.sum())

    def _pivot_solve(self, js: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """``Σ_jj⁻¹ rhs`` for candidates ``js`` (b,) and right-hand sides ``rhs`` (b, k)."""
        if not self.block:
            return rhs / self._pivot[js].unsqueeze(1)
        v = self._pivot_evecs[js]                                         # (b, k, k)
        coef = (v.transpose(1, 2) @ rhs.unsqueeze(2)).squeeze(2) / self._pivot_evals[js]
        return (v @ coef.unsqueeze(2)).squeeze(2)

    # ------------------------------------------------------------------ predictions
    @property
    def sigma(self) -> torch.Tensor:
        """Current Σ: ``(m, m)`` for scalar kernels, ``(m, m, k, k)`` for full blocks."""
        if not self.block:
            return self._sigma
        m, p = self.num_candidates, self._p
        return self._sigma.view(m, p, m, p).permute(0, 2, 1, 3)

    def posterior_variance(self) -> torch.Tensor:
        """Diagonal of Σ: ``(m,)`` for scalar kernels, the ``(m, k, k)`` blocks for full ones."""
        if not self.block:
            return self._sigma.diagonal().clone()
        m, p = self.num_candidates, self._p
        idx = torch.arange(m, device=self.device)
        return self._sigma.view(m, p, m, p)[idx, :, idx, :].clone()

    def base_predictions(self) -> torch.Tensor:
        """f̄(S) ``(m, k)``: the linearised network retrained on L (and on every conditioned point)."""
        return self._f_bar.clone()

    def _targets(self, ys, b: int) -> torch.Tensor:
        k = self.num_classes
        y = torch.as_tensor(ys, device=self.device)
        if not torch.is_floating_point(y):
            y = y.reshape(b)
            if b and (int(y.min()) < 0 or int(y.max()) >= k):
                raise ValueError(f"class labels must lie in [0, {k})")
            return torch.nn.functional.one_hot(y.long(), k).to(_DTYPE)
        y = y.to(_DTYPE)
        if y.shape == (k,) and b == 1:
            y = y.unsqueeze(0)
        if y.shape != (b, k):
            raise ValueError(f"targets must be class indices or vectors of length {k}, "
                             f"got shape {tuple(y.shape)}")
        return y

    def _positions(self, js) -> torch.Tensor:
        j = torch.as_tensor(js, device=self.device).reshape(-1)
        if j.numel() and (torch.is_floating_point(j) or int(j.min()) < 0
                          or int(j.max()) >= self.num_candidates):
            raise IndexError(f"candidate positions must be integers in [0, {self.num_candidates})")
        return j.long()

    def default_chunk_size(self, memory_budget: int = DEFAULT_CHUNK_BYTES) -> int:
        """Candidates per chunk: ``chunk_size`` if set, else as many as fit ``memory_budget`` bytes
        of look-ahead predictions (and their intermediates)."""
        if self.chunk_size is not None:
            return max(1, int(self.chunk_size))
        per = 8 * max(1, self.num_candidates) * self.num_classes * (self._p + 2)
        return max(1, int(memory_budget) // per)

    def _delta(self, js: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Look-ahead change of the predictions on S, ``(b, m, k)``."""
        m, k, p = self.num_candidates, self.num_classes, self._p
        coef = self._pivot_solve(js, y - self._f_bar[js])                # (b, k)
        if not self.block:
            cols = self._sigma[:, js].T                                   # (b, m)
            return cols.unsqueeze(2) * coef.unsqueeze(1)
        cols = self._sigma.view(m * p, m, p)[:, js, :]                    # (m k, b, k)
        cols = cols.permute(1, 0, 2)                                      # (b, m k, k)
        return (cols @ coef.unsqueeze(2)).reshape(js.shape[0], m, k)

    def retrained_predictions(self, j: int, y: LabelLike) -> torch.Tensor:
        """f^{(j,y)}(S) ``(m, k)``: predictions after retraining with ``(x_j, y)`` added.

        Parameters
        ----------
        j : int
            Candidate position.
        y : int or array of shape (k,)
            Class index (one-hot target) or a target vector.
        """
        js = self._positions([j])
        if js.numel() != 1:
            raise ValueError("j must be a single candidate position")
        if isinstance(y, (int, np.integer)):
            y = [int(y)]
        return self.retrained_predictions_batch(js, self._targets(y, 1))[0]

    def iter_retrained(self, js, ys, chunk_size: Optional[int] = None
                       ) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield ``(slice into js, f^{(j,y)}(S) for that chunk, shape (c, m, k))`` chunk by chunk,
        keeping memory bounded; ``ys`` are class indices ``(b,)`` or target vectors ``(b, k)``."""
        js = self._positions(js)
        b = int(js.shape[0])
        y = self._targets(ys, b)
        step = max(1, int(chunk_size)) if chunk_size else self.default_chunk_size()
        for start in range(0, b, step):
            sl = slice(start, min(b, start + step))
            yield sl, self._f_bar.unsqueeze(0) + self._delta(js[sl], y[sl])

    def iter_blocks(self, positions=None, block_size: Optional[int] = None
                    ) -> Iterator[LookaheadBlock]:
        """Yield :class:`LookaheadBlock` s over candidate ``positions`` (default: all), ``block_size``
        at a time (default :meth:`default_chunk_size`). Here E is the candidate set itself."""
        js = self._positions(np.arange(self.num_candidates) if positions is None else positions)
        step = max(1, int(block_size)) if block_size else self.default_chunk_size()
        m, p = self.num_candidates, self._p
        for start in range(0, int(js.shape[0]), step):
            jb = js[start:start + step]
            if not self.block:
                cov = self._sigma[:, jb].T                                      # (b, m)
                evals, evecs = self._pivot[jb], None
            else:
                cols = self._sigma.view(m, p, m, p)[:, :, jb, :]                # (m, k, b, k)
                cov = cols.permute(2, 0, 1, 3)                                  # (b, m, k, k)
                evals, evecs = self._pivot_evals[jb], self._pivot_evecs[jb]
            yield LookaheadBlock(positions=jb, cov=cov, pivot_evals=evals, pivot_evecs=evecs,
                                 f_bar_eval=self._f_bar, f_bar_cand=self._f_bar[jb],
                                 f0_eval=self.f0_candidates, f0_cand=self.f0_candidates[jb])

    def retrained_predictions_batch(self, js, ys, chunk_size: Optional[int] = None
                                    ) -> torch.Tensor:
        """Batched :meth:`retrained_predictions`: ``(b, m, k)`` for candidates ``js`` (b,) with
        targets ``ys`` (class indices (b,) or vectors (b, k)), computed in chunks."""
        js = self._positions(js)
        out = torch.empty(js.shape[0], self.num_candidates, self.num_classes,
                          dtype=_DTYPE, device=self.device)
        for sl, preds in self.iter_retrained(js, ys, chunk_size):
            out[sl] = preds
        return out

    # ------------------------------------------------------------------ sequential update
    def condition(self, j: int, y: LabelLike) -> None:
        """Add ``(x_j, y)`` to the training set of the linearised network, in closed form.

        ``f̄ ← f̄ + Σ[:, j] Σ_jj⁻¹ (y − f̄_j)`` and ``Σ ← Σ − Σ[:, j] Σ_jj⁻¹ Σ[j, :]``
        (``O(m² k²)`` with blocks, ``O(m²)`` otherwise): sequential active learning with no SGD
        between queries (Mohamadi et al., 2022, Sec. 3.2).
        """
        js = self._positions([j])
        if js.numel() != 1:
            raise ValueError("j must be a single candidate position")
        jj = int(js[0])
        if bool(self._conditioned_mask[jj]):
            raise ValueError(f"candidate {jj} has already been conditioned on")
        if isinstance(y, (int, np.integer)):
            y = [int(y)]
        target = self._targets(y, 1)
        m, p = self.num_candidates, self._p
        if not self.block:
            col = self._sigma[:, jj].clone()                              # (m,)
            piv = self._pivot[jj]
            self._f_bar = self._f_bar + col.unsqueeze(1) * ((target[0] - self._f_bar[jj]) / piv)
            self._sigma = self._sigma - torch.outer(col, col) / piv
            self._sigma[jj, :] = 0.0
            self._sigma[:, jj] = 0.0
        else:
            cols = self._sigma[:, jj * p:(jj + 1) * p].clone()            # (m k, k)
            v, ev = self._pivot_evecs[jj], self._pivot_evals[jj]
            coef = self._pivot_solve(js, target - self._f_bar[jj:jj + 1])[0]
            self._f_bar = self._f_bar + (cols @ coef).reshape(m, p)
            half = cols @ v / ev.sqrt()                                   # Σ[:, j] Σ_jj^{-1/2}
            self._sigma = self._sigma - half @ half.T
            self._sigma[jj * p:(jj + 1) * p, :] = 0.0
            self._sigma[:, jj * p:(jj + 1) * p] = 0.0
        self._sigma = 0.5 * (self._sigma + self._sigma.T)
        self._conditioned_mask[jj] = True
        self.conditioned.append(jj)
        self._refresh_pivots()

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return (f"Lookahead(kernel={self.kernel!r}, n={self.num_labelled}, m={self.num_candidates}, "
                f"k={self.num_classes}, ridge={self.ridge}, jitter={self.jitter:.3g}, "
                f"conditioned={len(self.conditioned)}, clamped={self.num_clamped})")
