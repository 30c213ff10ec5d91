"""Small stand-ins shared by the learner tests: a tiny net, strategies with known choices, blobs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ntkal.learner import ActiveLearner
from ntkal.strategies.base import (
    QueryContext,
    QueryResult,
    SequentialSession,
    Strategy,
    check_budget,
)
from tiny_nets import TinyNet


@dataclass
class Cfg:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.1
    seed: int = 0


class Net(TinyNet):
    """The learner tests' network: the shared :class:`TinyNet` with one Tanh block."""

    def __init__(self, d=2, k=3, h=16):
        super().__init__(d, h, k)


class MaxEntropy(Strategy):
    """Stand-in: highest predictive entropy; trains with a few full-batch SGD steps."""

    name = "stand_in_entropy"

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature
        self.train_calls = 0

    def query(self, context: QueryContext, budget: int) -> QueryResult:
        budget = check_budget(budget, context.num_candidates)
        with torch.no_grad():
            p = torch.softmax(context.model(context.x_candidates) / self.temperature, dim=1)
        h = -(p * p.clamp_min(1e-12).log()).sum(1).numpy()
        return QueryResult(indices=np.argsort(-h, kind="stable")[:budget], scores=h)

    def train(self, model, x, y, config, num_classes, *, progress=False):
        self.train_calls += 1
        torch.manual_seed(config.seed)
        opt = torch.optim.SGD(model.parameters(), lr=config.lr)
        for _ in range(config.epochs):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()


class FirstFreeSession(SequentialSession):
    """Proposes the lowest position not observed yet (like a real session, it refuses to run dry)."""

    def __init__(self, context):
        self.context = context
        self.observed: list[tuple[int, int]] = []

    def propose(self):
        taken = {p for p, _ in self.observed}
        free = [i for i in range(self.context.num_candidates) if i not in taken]
        if not free:
            raise ValueError("every candidate has been labelled: nothing left to propose")
        return free[0], 1.0

    def observe(self, position, label):
        if any(p == position for p, _ in self.observed):
            raise ValueError(f"candidate {position} has already been observed")
        self.observed.append((position, label))


class Sequential(MaxEntropy):
    name = "stand_in_sequential"

    def __init__(self, temperature: float = 1.0):
        super().__init__(temperature)
        self.sessions: list[FirstFreeSession] = []

    @property
    def session(self) -> FirstFreeSession:
        return self.sessions[-1]

    def begin_sequential(self, context):
        self.sessions.append(FirstFreeSession(context))
        return self.session


class KnownPositions(Strategy):
    """Returns fixed positions into the candidates (batch) and proposes them in order (sequential),
    recording the candidate inputs it was shown, so a test knows exactly which pool points it chose."""

    name = "stand_in_known_positions"

    def __init__(self, positions):
        self.positions = [int(p) for p in positions]
        self.seen: list[torch.Tensor] = []

    def query(self, context, budget):
        self.seen.append(context.x_candidates.clone())
        return QueryResult(indices=np.asarray(self.positions[:budget], dtype=np.int64))

    def train(self, model, x, y, config, num_classes, *, progress=False):
        return None

    def begin_sequential(self, context):
        self.seen.append(context.x_candidates.clone())
        strategy = self

        class _Session(SequentialSession):
            def __init__(self):
                self.step = 0

            def propose(self):
                pos = strategy.positions[self.step % len(strategy.positions)]
                return pos, 0.0

            def observe(self, position, label):
                self.step += 1

        return _Session()


def blobs(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    return centres[y] + 0.7 * torch.randn(n, 2, generator=g), y


def make_learner(strategy=None, model=None, **kw):
    torch.manual_seed(0)
    x, y = blobs()
    args = dict(y_pool=y, labelled=[0, 1, 2, 3, 4, 5], num_classes=3, train_config=Cfg())
    args.update(kw)
    return ActiveLearner(model if model is not None else Net(), strategy or MaxEntropy(), x, **args)
