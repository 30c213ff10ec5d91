"""Ask/tell active learning over a pool of unlabelled inputs.

:class:`ActiveLearner` keeps the state an active-learning loop needs between rounds (which pool
points are labelled, with which labels, the trained network, the strategy and the cycle counter) so
that a user labelling their own data, and the experiment runner simulating an oracle, drive the
same object::

    learner = ActiveLearner(model, "mlmoc", x_pool, num_classes=10, train_config=cfg,
                            labelled=init, labels=init_labels)
    learner.fit()
    idx = learner.query(10)          # pool indices to label
    learner.teach(idx, oracle(idx))  # record the labels
    learner.fit()                    # SGD on the enlarged labelled set (warm start)

In ``mode="sequential"`` a look-ahead strategy proposes one point at a time and conditions on each
taught label in closed form (no SGD) until the next :meth:`ActiveLearner.fit`.

Modules: :mod:`~ntkal.learner.active_learner` (the facade), :mod:`~ntkal.learner.candidates`
(which points a query scores), :mod:`~ntkal.learner.sequential` (sessions),
:mod:`~ntkal.learner.persistence` (save/load), :mod:`~ntkal.learner.inputs` (input and model
checks).
"""

from __future__ import annotations

from ntkal.learner.active_learner import MODES, ActiveLearner
from ntkal.learner.inputs import ProbabilityOutputWarning
from ntkal.learner.persistence import strategy_params

__all__ = ["ActiveLearner", "MODES", "ProbabilityOutputWarning", "strategy_params"]
