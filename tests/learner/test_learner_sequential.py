"""Sequential mode: sessions count every label (taught or oracle), restart when they run dry, and
map session positions to exactly the pool indices the strategy chose."""

from __future__ import annotations

import numpy as np
import pytest
from learner_doubles import KnownPositions, Sequential, blobs, make_learner


def test_taught_points_count_against_the_session_and_a_dry_session_restarts():
    """subset=5, four query(1)+teach rounds, then query(2): the fifth candidate and one point of a
    fresh session come back, every index returned is one the session conditioned on, and the 50
    unlabelled points stay reachable (on the old code: an index conditioned on but never returned,
    then 'every candidate has been labelled' until fit())."""
    strategy = Sequential()
    learner = make_learner(strategy, mode="sequential", subset=5, labelled=np.arange(70))
    _, y = blobs()
    first_candidates = None
    for _ in range(4):
        idx = learner.query(1)
        if first_candidates is None:
            first_candidates = strategy.session.context.x_candidates.clone()
        learner.teach(idx, y[idx])
    assert len(strategy.sessions) == 1 and len(strategy.session.observed) == 4
    two = learner.query(2)
    assert two.shape == (2,) and np.unique(two).size == 2
    assert not np.isin(two, learner.labelled_indices).any()
    assert len(strategy.sessions) == 2, "a dry session must give way to a new one"
    # the old session's last candidate, observed with its oracle label, is the first index returned
    x_pool, _ = blobs()
    old = strategy.sessions[0]
    last_pos = old.observed[-1][0]
    assert np.allclose(x_pool[two[0]].numpy(), first_candidates[last_pos].numpy())
    assert old.observed[-1][1] == int(y[two[0]])
    learner.teach(two, y[two])
    for _ in range(learner.pool.num_unlabelled):  # the rest of the pool stays reachable
        idx = learner.query(1)
        assert not np.isin(idx, learner.labelled_indices).any()
        learner.teach(idx, y[idx])
    assert learner.pool.num_unlabelled == 0
    with pytest.raises(ValueError, match="every pool point is labelled"):
        learner.query(1)


def test_pending_oracle_labels_carry_into_a_new_session():
    """Points returned by query(b > 1) but not yet taught are neither proposed again by a new
    session nor forgotten: the new session is conditioned on their oracle labels."""
    strategy = Sequential()
    learner = make_learner(strategy, mode="sequential", subset=3, labelled=np.arange(100))
    _, y = blobs()
    a = learner.query(2)  # session 1: candidates 0, 1 of 3 observed, nothing taught
    b = learner.query(2)  # candidate 2, then session 2 (conditioned on the 3 pending)
    assert len(strategy.sessions) == 2
    returned = np.concatenate([a, b])
    assert np.unique(returned).size == 4
    second = strategy.sessions[1]
    x_pool, _ = blobs()
    cand = second.context.x_candidates
    observed = {pos for pos, _ in second.observed}
    for index in a.tolist() + b[:1].tolist():  # pending before session 2 began
        pos = int(np.flatnonzero((cand == x_pool[index]).all(dim=1))[0])
        assert pos in observed
    learner.teach(returned, y[returned])
    assert learner.pool.num_labelled == 104


def test_sequential_query_refuses_budget_beyond_unlabelled_and_pending():
    strategy = Sequential()
    learner = make_learner(strategy, mode="sequential", labelled=np.arange(117))
    learner.query(2)  # two pending
    with pytest.raises(ValueError, match="larger than"):
        learner.query(2)
    assert learner.query(1).size == 1


@pytest.mark.parametrize("mode", ["batch", "sequential"])
def test_positions_map_to_exactly_those_pool_indices(mode):
    """A strategy that picks known positions gets exactly those candidates' pool indices back
    (kills an off-by-one between positions and pool indices)."""
    positions = [3, 0, 7]
    strategy = KnownPositions(positions)
    learner = make_learner(strategy, mode=mode, subset=10, seed=4)
    x_pool, _ = blobs()
    idx = learner.query(3) if mode == "batch" else np.concatenate([learner.query(1)] * 1)
    cand = strategy.seen[-1]
    expected = [int(np.flatnonzero((x_pool == cand[p]).all(dim=1))[0]) for p in positions]
    if mode == "batch":
        assert idx.tolist() == expected
    else:
        assert idx.tolist() == expected[:1]
        idx3 = learner.query(3)
        assert idx3.tolist() == expected


@pytest.mark.filterwarnings("ignore:.*(jitter|floor).*:RuntimeWarning")  # untrained tiny net
def test_issue_repro_with_sequential_mlmoc():
    """The reported sequence with the real strategy: subset=5, four query(1) + teach, query(2)."""
    from ntkal.strategies import get_strategy

    strategy = get_strategy("mlmoc")
    strategy.train = lambda *a, **k: None
    learner = make_learner(strategy, mode="sequential", subset=5, labelled=np.arange(10))
    _, y = blobs()
    for _ in range(4):
        idx = learner.query(1)
        learner.teach(idx, y[idx])
    first_session = learner.session
    two = learner.query(2)
    assert np.unique(two).size == 2 and not np.isin(two, learner.labelled_indices).any()
    second = learner.session
    assert second is not first_session
    assert set(second.observed) == {
        int(np.searchsorted(learner.session_candidates, two[1])),
        int(np.searchsorted(learner.session_candidates, two[0])),
    }
    learner.teach(two, y[two])
    assert learner.session is second
    nxt = learner.query(1)
    assert not np.isin(nxt, learner.labelled_indices).any()


def test_a_pending_point_taught_another_label_ends_the_session():
    """query(2) conditions the session on both oracle labels; the user then teaches one of them
    a different label: the session, conditioned on the overruled label, must not be used again
    (the next query starts a new one over L with the taught label, still conditioned on the
    other pending point's oracle label)."""
    strategy = Sequential()
    learner = make_learner(strategy, mode="sequential", subset=6, labelled=np.arange(100))
    _, y = blobs()
    a = learner.query(2)
    first = strategy.sessions[0]
    assert [label for _, label in first.observed] == [int(y[i]) for i in a]
    wrong = (int(y[a[0]]) + 1) % 3
    learner.teach(a[:1], np.array([wrong]))
    learner.query(1)
    assert len(strategy.sessions) == 2, "a session conditioned on an overruled label was reused"
    second = strategy.sessions[1]
    x_pool, _ = blobs()
    cand = second.context.x_candidates
    pos = int(np.flatnonzero((cand == x_pool[a[1]]).all(dim=1))[0])
    assert (pos, int(y[a[1]])) in second.observed  # the other pending label carried over
    assert not (cand == x_pool[a[0]]).all(dim=1).any()  # the taught point is labelled now


def test_a_pending_point_taught_its_oracle_label_keeps_the_session():
    strategy = Sequential()
    learner = make_learner(strategy, mode="sequential", subset=6, labelled=np.arange(100))
    _, y = blobs()
    a = learner.query(2)
    learner.teach(a[:1], y[a[:1]])
    learner.query(1)
    assert len(strategy.sessions) == 1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_rebuilt_session_proposes_what_the_continuing_one_does():
    """Same weights, same labels: a learner whose session observed a taught point and one that
    starts its session after that point was taught propose the same next point (default
    reference "f0"; on the old code, whose reference depended on the session's start, they
    disagreed)."""
    from ntkal.strategies import get_strategy

    _, y = blobs()
    agree = 0
    for start in range(4):
        labelled = np.arange(6 * start, 6 * start + 9)
        nxt = []
        for rebuild in (False, True):
            strategy = get_strategy("mlmoc")
            strategy.train = lambda *a, **k: None
            learner = make_learner(strategy, mode="sequential", labelled=labelled)
            if not rebuild:
                first = learner.query(1)
                learner.teach(first, y[first])
            else:
                learner.teach(first, y[first])  # no session yet: the next one is new
            nxt.append(int(learner.query(1)[0]))
        agree += int(nxt[0] == nxt[1])
    assert agree == 4


def test_relabel_last_corrects_the_label_and_ends_a_session_that_cannot():
    """relabel_last changes the stored label of the point taught last; a session without a
    closed-form relabel (the test double) ends, and the next query starts one on the new label."""
    strategy = Sequential()
    learner = make_learner(strategy, mode="sequential", subset=5, labelled=np.arange(70))
    _, y = blobs()
    idx = learner.query(1)
    learner.teach(idx, y[idx])
    other = (int(y[idx[0]]) + 1) % learner.num_classes
    with pytest.raises(ValueError, match="taught last"):
        learner.relabel_last(0, other)
    learner.relabel_last(int(idx[0]), other)
    assert int(learner.labels[-1]) == other and learner.session is None
    learner.query(1)
    assert len(strategy.sessions) == 2
