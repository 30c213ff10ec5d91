"""The last-layer kernel: the final ``nn.Linear``'s inputs ``a(x)``, Θ(x, x') = a(x)·a(x') (+1
with a trainable bias), the same for every class (read as Θ ⊗ I_k)."""

from __future__ import annotations

import threading

import torch
from torch import nn

__all__ = ["classifier_of", "last_layer_pair"]


def classifier_of(model: nn.Module) -> nn.Linear:
    """``model.classifier`` if it is an ``nn.Linear``, else the last ``nn.Linear`` in module
    order; a ValueError when there is none."""
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        return head
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ValueError(
            "kind='last_layer' needs a final nn.Linear (model.classifier, or the last "
            "nn.Linear in module order); none found"
        )
    return last


def last_layer_pair(model: nn.Module):
    """``(featurise, contract, feature width)`` of the final linear layer's kernel."""
    head = classifier_of(model)
    use_w = head.weight.requires_grad
    use_b = head.bias is not None and head.bias.requires_grad
    store: dict[int, torch.Tensor | None] = {}  # per thread: the network may run in several

    def hook(module, inp, out):
        tid = threading.get_ident()
        if tid in store:  # only a thread inside featurise() records
            store[tid] = inp[0].detach()

    def featurise(x):
        tid = threading.get_ident()
        store[tid] = None
        handle = head.register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = model(x)
        finally:
            handle.remove()
            a = store.pop(tid)
        assert a is not None
        return a.reshape(x.shape[0], -1), logits

    def contract(a1, a2, dest):
        if use_w:
            dest.add_(a1 @ a2.T)
        if use_b:
            dest.add_(1.0)

    return featurise, contract, head.in_features
