"""The hook path does not synchronise host and device per batch.

On a GPU every ``int(t)``, ``bool(t)``, ``t.item()``, boolean indexing (``nonzero``) or ``bincount``
makes the CPU wait for the device. On the CPU they are visible as the aten ops that read a tensor
back to the host; a ``TorchDispatchMode`` records them.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import hf_collapse.integrations.passes as passes
from hf_collapse import CollapseArguments, CollapseStatistics
from hf_collapse.integrations.hooks import FeatureHooks, StatisticsSink
from hf_collapse.integrations.passes import collect_nc4, collect_statistics

# ops whose CUDA implementation copies a value to the host (a device synchronisation)
SYNC_OPS = {
    "_local_scalar_dense",
    "is_nonzero",
    "item",
    "nonzero",
    "masked_select",
    "bincount",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "repeat_interleave",
    "equal",
    "allclose",
}


class SyncCounter(TorchDispatchMode):
    """Records every aten op in SYNC_OPS, and indexing with a boolean mask (a hidden ``nonzero``)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.calls.append(name)
        elif name in ("index", "index_put", "index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or [])
        ):
            self.calls.append(f"{name}[bool]")
        return func(*args, **(kwargs or {}))


def test_counter_sees_the_usual_syncs():
    t = torch.tensor([1, -100, 3])
    with SyncCounter() as c:
        int(t.min()), bool((t > 0).all()), t[t > 0], torch.bincount(t.clamp(min=0))
    assert {"_local_scalar_dense", "index[bool]", "bincount"} <= set(c.calls), c.calls


def test_deferred_update_has_no_sync_and_check_raises_the_same_errors():
    torch.manual_seed(0)
    h = torch.randn(6, 4)
    y = torch.tensor([0, 1, -100, 2, 2, -100])
    eager, deferred = CollapseStatistics(3, 4), CollapseStatistics(3, 4, defer_checks=True)
    eager.update(h, y)
    with SyncCounter() as c:
        for _ in range(5):
            deferred.update(h, y)
    assert c.calls == []
    deferred.check()  # nothing bad: no error
    assert torch.equal(deferred.counts, 5 * eager.counts) and deferred.num_tokens == 20
    torch.testing.assert_close(deferred.means, eager.means, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(deferred.variances, eager.variances, rtol=1e-10, atol=1e-12)

    bad = CollapseStatistics(3, 4, defer_checks=True)
    bad.update(h, torch.tensor([0, 1, 7, 2, 2, -100]))  # no error yet: checked later, without a sync
    with pytest.raises(ValueError, match=r"label 7 is outside \[0, 3\)"):
        bad.check()
    nan = h.clone()
    nan[1, 2] = float("nan")
    bad.update(nan, y)
    with pytest.raises(ValueError, match="NaN or infinite"):
        bad.check()
    bad.check()  # an error is raised once; the rows it concerned were not accumulated
    assert torch.isfinite(bad.sums).all()
    with pytest.raises(ValueError, match=r"label -3 is outside"):  # eager: at once, state untouched
        eager.update(h, torch.tensor([0, -3, 1, 1, 1, 1]))
    assert eager.num_tokens == 4


@pytest.fixture(scope="module")
def model_and_batches(shared_data):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(shared_data / "models" / "stories260K").eval()
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 512, (2, 16), generator=g)} for _ in range(12)]
    return model, batches


def _count(fn):
    with SyncCounter() as c:
        fn()
    return c.calls


def test_hooked_forward_adds_no_sync(model_and_batches):
    model, batches = model_and_batches
    batch = batches[0]
    with torch.no_grad():
        plain = _count(lambda: model(**batch))
        collector = FeatureHooks(model)
        collector.sink = StatisticsSink(collector.num_classes)
        collector.remaining = torch.tensor(20)  # the budget cut of a single process, on the device
        with collector:
            hooked = _count(lambda: model(**batch))
    assert hooked == plain, f"the hooks added {len(hooked) - len(plain)} synchronising calls: {hooked}"
    # 2 rows x 15 labels, flattened in order: the first 20 labelled positions are kept
    assert collector.sink.statistics["lm_head"].num_tokens == 20 and int(collector.batch_tokens) == 20


def test_pass_syncs_do_not_grow_with_batches(model_and_batches, monkeypatch):
    model, batches = model_and_batches
    monkeypatch.setattr(passes, "SYNC_EVERY", 1000)
    # the model's own, per forward, as the pass runs it (use_cache=False: transformers then checks for packed
    # documents, one sync of its own)
    plain = len(_count(lambda: [model(**b, use_cache=False) for b in batches[:4]])) / 4
    few = _count(lambda: collect_statistics(model, batches[:4], progress=False))
    many = _count(lambda: collect_statistics(model, batches, progress=False))
    assert len(many) - len(few) == (len(batches) - 4) * plain, (few, many)
    # with a budget the cut is exact and the host reads the count only near the end
    budget = 11 * 30 + 7
    few = _count(
        lambda: collect_statistics(model, batches, CollapseArguments(collapse_max_tokens=budget), progress=False)
    )
    stats = collect_statistics(model, batches, CollapseArguments(collapse_max_tokens=budget), progress=False)
    assert stats.num_tokens == budget
    assert len(few) - len(many) <= 8 * (1 + plain)  # a few batches near the budget, not one per batch
    nc4_few = _count(lambda: collect_nc4(model, batches[:4], stats, progress=False))
    nc4_many = _count(lambda: collect_nc4(model, batches, stats, progress=False))
    assert len(nc4_many) - len(nc4_few) == (len(batches) - 4) * plain
