"""Review of issue #12 (host overhead): cases where the step cache (adadelta_fused/step_cache.py) made a
step differ from planning every step (the cache cleared before each step: the oracle) or from torch."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from adadelta_fused import Adadelta


def _params(n: int = 2, seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(4, 3, generator=generator)) for _ in range(n)]


def _give_grads(params, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)


def _step(opt: Adadelta, oracle: bool, step=None) -> None:
    if oracle:
        opt._step_caches.clear()
    (step or opt.step)()


def _assert_same(ours: Adadelta, plain: Adadelta, params, plain_params) -> None:
    for i, (p, q) in enumerate(zip(params, plain_params)):
        assert torch.equal(p, q), f"param {i} differs from planning every step"
        a, b = ours.state.get(p, {}), plain.state.get(q, {})
        assert a.keys() == b.keys(), f"param {i} state keys"
        for key in a:
            assert torch.equal(a[key], b[key]), f"param {i} state[{key!r}]"


def test_a_group_taken_out_and_put_back_after_its_state_was_reset_is_planned_again():
    # The steps without the group settled its stale cache (its writes count) though they never checked it;
    # put back, the cache passed and stepped the orphaned state dicts, not opt.state's.
    runs = []
    for oracle in (False, True):
        first, second = _params(seed=0), _params(seed=2)
        opt = Adadelta([{"params": first}, {"params": second}])
        _give_grads(first + second)
        for _ in range(2):
            _step(opt, oracle)
        group = opt.param_groups.pop()
        _step(opt, oracle)
        opt.state[second[0]] = {}  # reset one param's state while its group is out
        _step(opt, oracle)
        opt.param_groups.append(group)
        _step(opt, oracle)
        runs.append((opt, first + second))
    (ours, params), (plain, plain_params) = runs
    _assert_same(ours, plain, params, plain_params)
    assert ours.state[params[2]]["step"].item() == 1.0


def test_a_compiled_step_after_a_state_reset_does_not_hide_it_from_the_next_eager_step():
    # The compiled step (no cache check under torch.compile) settled the eager step's stale cache; the
    # eager step after it then updated the state dicts cleared from opt.state (mixing compiled and eager
    # steps: a recompile limit falls back to eager, an eval loop compiles only part).
    runs = []
    for oracle in (False, True):
        params = _params()
        opt = Adadelta(params)
        compiled = torch.compile(opt.step, backend="eager")
        _give_grads(params)
        for _ in range(2):
            _step(opt, oracle)
        opt.state.clear()
        _step(opt, oracle, compiled)
        _step(opt, oracle)
        runs.append((opt, params))
    (ours, params), (plain, plain_params) = runs
    _assert_same(ours, plain, params, plain_params)
    assert ours.state[params[0]]["step"].item() == 2.0


def test_a_removed_group_s_cache_does_not_keep_its_state_alive():
    # torch frees a removed group's state once the user deletes it from opt.state; the cache of the
    # removed group's index held it forever. (Freed at the next step now; torch frees it at once.)
    kept, removed = _params(1), _params(1)
    opt = Adadelta([{"params": kept}, {"params": removed}])
    _give_grads(kept + removed)
    opt.step()
    opt.step()
    square_avg = weakref.ref(opt.state[removed[0]]["square_avg"])
    opt.param_groups.pop()
    del opt.state[removed[0]]
    opt.step()
    gc.collect()
    assert square_avg() is None


def test_a_step_counter_changed_in_place_raises_before_anything_is_written():
    params = _params()
    opt = Adadelta(params)
    _give_grads(params)
    opt.step()
    opt.step()
    before = [p.detach().clone() for p in params]
    opt.state[params[1]]["step"].data = torch.tensor(2, dtype=torch.int64)  # an old checkpoint's int step
    with pytest.raises(ValueError, match=r"state_steps\[1\] must be a 1-element float32 or float64"):
        opt.step()
    for p, b in zip(params, before):
        assert torch.equal(p, b), "the step was half applied: params written before the error"


def test_an_accumulator_cast_in_place_is_followed_as_planning_follows_it():
    runs = []
    for oracle in (False, True):
        params = _params()
        opt = Adadelta(params)
        _give_grads(params)
        for _ in range(2):
            _step(opt, oracle)
        square_avg = opt.state[params[1]]["square_avg"]
        square_avg.data = square_avg.data.double()
        _step(opt, oracle)
        runs.append((opt, params))
    (ours, params), (plain, plain_params) = runs
    _assert_same(ours, plain, params, plain_params)


def test_a_pickled_optimizer_names_no_class_of_ours_for_its_state():
    # opt.state pickled as adadelta_fused.step_cache.StateMap: torch.save(opt) (or of opt.state) made by
    # this version did not load with an adadelta_fused from before the cache, nor where the module moved.
    import copy
    import pickle
    from collections import defaultdict

    params = _params()
    opt = Adadelta(params)
    _give_grads(params)
    opt.step()
    assert b"step_cache" not in pickle.dumps(opt)
    state = pickle.loads(pickle.dumps(opt.state))
    assert type(state) is defaultdict and len(state) == 2
    twin = copy.deepcopy(opt)
    _give_grads(twin.param_groups[0]["params"])  # (a copied Parameter has no grad)
    twin.step()  # the copy's state is a StateMap again, and cached
    twin.step()
    assert twin._step_caches and all(float(s["step"]) == 3.0 for s in twin.state.values())
