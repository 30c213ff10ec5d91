"""One rule picks the look-ahead engine; :func:`fit_lookahead` builds it from a model."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ntkal.lookahead.block import _DTYPE, DEFAULT_EVAL_SIZE, EvalSize, eval_positions_for

__all__ = ["ENGINES", "DENSE_ADVANTAGE", "choose_engine", "dense_bytes", "fit_lookahead"]

ENGINES = ("auto", "dense", "streaming")


def dense_bytes(n: int, m: int, p: int) -> int:
    """Peak bytes of the dense engine: the float64 ``(n + m)²`` kernel (``p = k`` for full
    blocks, whose flattened Σ is a second ``(m k)²`` copy) plus ``V = L⁻¹ Θ_LS``."""
    copies = 2 if p > 1 else 1
    return int(8 * p * p * ((n + m) ** 2 * copies + n * m))


#: How much cheaper a dense kernel entry is than a streamed one (the dense engine runs one
#: symmetric kernel call with large blocks; the streaming engine also pays ``V_Eᵀ V_J`` and a
#: second featurisation of the candidates). Measured with ``benchmarks/pool_scale.py``: MLP on
#: Fashion-MNIST, n = 1000, m = 10 000, e = 5000: dense 90 s, streaming 128 s (ratio 1.4).
DENSE_ADVANTAGE = 1.4


def choose_engine(n: int, m: int, e: int, p: int, max_memory: int, engine: str = "auto") -> str:
    """``"dense"`` or ``"streaming"``.

    ``"auto"`` takes the dense engine when :func:`dense_bytes` fits ``max_memory`` and its kernel
    entries, ``(n + m)² / 2`` (symmetric), are at most ``DENSE_ADVANTAGE`` times the streaming
    engine's ``(e + n) · m`` (Θ(E, C) for scoring, Θ(L, C) once); otherwise the streaming engine,
    which computes only Σ[E, J] per block. So E = C on a pool that fits is dense, and a pool much
    larger than E is streamed even when memory would allow the dense Σ.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine != "auto":
        return engine
    cheaper = (n + m) ** 2 / 2 <= DENSE_ADVANTAGE * (e + n) * m
    return "dense" if cheaper and dense_bytes(n, m, p) <= max_memory else "streaming"


def _onehot_targets(y_labelled, k: int, device) -> torch.Tensor:
    y = torch.as_tensor(y_labelled).to(device)
    if y.ndim == 1:
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
            raise ValueError(f"labels must lie in [0, {k}), got range "
                             f"[{int(y.min())}, {int(y.max())}]")
        return torch.nn.functional.one_hot(y.long(), k).to(_DTYPE)
    if y.shape != (y.shape[0], k):
        raise ValueError(f"y_labelled must be class indices (n,) or targets (n, {k}), got "
                         f"shape {tuple(y.shape)}")
    return y.to(_DTYPE)


def fit_lookahead(model: nn.Module, x_labelled, y_labelled, x_candidates, *,
                  num_classes: Optional[int] = None, kernel: str = "pseudo", ridge: float = 0.0,
                  implementation: str = "auto", chunk_size: Optional[int] = None,
                  progress: bool = False, eps: float = 1e-6, max_memory: Optional[int] = None,
                  eval_size: EvalSize = DEFAULT_EVAL_SIZE, eval_seed: int = 0,
                  eval_positions=None, engine: str = "auto"):
    """See :meth:`ntkal.lookahead.Lookahead.fit`."""
    from ntkal.kernels import empirical_ntk, make_featuriser
    from ntkal.kernels.blocking import default_max_memory
    from ntkal.lookahead.dense import Lookahead
    from ntkal.lookahead.streaming import StreamingLookahead

    try:
        dev = next(model.parameters()).device
    except StopIteration:  # pragma: no cover - parameter-free model
        dev = torch.device("cpu")
    x_l = torch.as_tensor(x_labelled)
    x_s = torch.as_tensor(x_candidates)
    if max_memory is not None and max_memory <= 0:
        raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory}")
    budget = int(max_memory) if max_memory is not None else default_max_memory(dev)
    n, m = int(x_l.shape[0]), int(x_s.shape[0])
    if m == 0:
        raise ValueError("x_candidates is empty: nothing to look ahead on")
    pos = eval_positions_for(m, eval_size, eval_seed, eval_positions)
    with torch.no_grad():
        k_out = int(model.eval()(x_s[:1].to(dev, dtype=next(model.parameters()).dtype)
                                 if x_s.is_floating_point() else x_s[:1].to(dev)).shape[1])
    if num_classes is not None and int(num_classes) != k_out:
        raise ValueError(f"num_classes={num_classes} but the model outputs {k_out} values")
    p = k_out if kernel == "full" else 1
    choice = choose_engine(n, m, len(pos), p, budget, engine)
    if choice == "dense":
        x = torch.cat([x_l.to(dev), x_s.to(dev, dtype=x_l.dtype)], dim=0)
        kw = dict(kind=kernel, implementation=implementation, dtype=_DTYPE, return_outputs=True,
                  max_memory=budget)
        if progress:
            kw["progress"] = True
        theta, f, _ = empirical_ntk(model, x, **kw)
        f = f.detach().to(_DTYPE)
        y = _onehot_targets(y_labelled, k_out, f.device)
        return Lookahead(theta[:n, :n], theta[n:, :n], theta[n:, n:], f[:n], f[n:], y,
                         ridge=ridge, eps=eps, chunk_size=chunk_size, kernel=kernel,
                         eval_positions=None if len(pos) == m else pos, _owned=True)
    fz = make_featuriser(model, x_s[:1], kind=kernel, implementation=implementation,
                         dtype=_DTYPE, n1=len(pos), n2=m)
    y = _onehot_targets(y_labelled, k_out, fz.device)
    return StreamingLookahead(fz, x_l, y, x_s, eval_positions=pos, ridge=ridge, eps=eps,
                              chunk_size=chunk_size, max_memory=budget, kernel=kernel)
