import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from reference import dense_statistics  # noqa: E402

from hf_collapse import CollapseStatistics  # noqa: E402


def make_data(N=600, C=12, d=6, seed=0, offset=0.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (N,), generator=g)
    centres = torch.randn(C, d, generator=g, dtype=torch.float64) * 3
    h = (centres[y] + torch.randn(N, d, generator=g, dtype=torch.float64) + offset).to(dtype)
    return h, y


def test_matches_dense_two_pass():
    h, y = make_data()
    y[::7] = -100
    s = CollapseStatistics(12, 6)
    s.update(h, y)
    counts, means, variances = dense_statistics(h.double().numpy(), y.numpy(), 12)
    np.testing.assert_array_equal(s.counts.numpy(), counts)
    np.testing.assert_allclose(s.means.numpy(), means, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.variances.numpy(), variances, rtol=1e-10)
    assert s.num_tokens == int((y != -100).sum())
    assert s.counts.dtype == s.means.dtype == s.variances.dtype == torch.float64


def test_large_common_offset_one_pass_is_accurate():
    # unit-scale noise on a 1e3 offset: the naive E||h||^2 - ||E h||^2 loses digits, the shifted sums do not
    h, y = make_data(N=4000, C=10, d=16, offset=1e3, dtype=torch.float64)
    s = CollapseStatistics(10, 16)
    for chunk_h, chunk_y in zip(h.split(333), y.split(333)):
        s.update(chunk_h, chunk_y)
    _, means, variances = dense_statistics(h.numpy(), y.numpy(), 10)
    np.testing.assert_allclose(s.variances.numpy(), variances, rtol=1e-6)
    np.testing.assert_allclose(s.means.numpy(), means, rtol=1e-12)


def test_large_offset_survives_merge_with_different_shifts():
    h, y = make_data(N=3000, C=8, d=8, offset=1e3, dtype=torch.float64)
    a, b = CollapseStatistics(8, 8), CollapseStatistics(8, 8)
    a.update(h[:1000], y[:1000])  # different first batches -> different shifts
    b.update(h[1000:], y[1000:])
    assert not torch.equal(a.shift, b.shift)
    a.merge(b)
    _, means, variances = dense_statistics(h.numpy(), y.numpy(), 8)
    np.testing.assert_allclose(a.variances.numpy(), variances, rtol=1e-6)
    np.testing.assert_allclose(a.means.numpy(), means, rtol=1e-12)


@pytest.mark.parametrize("covariance", [False, True])
def test_batch_order_size_and_split_invariance(covariance):
    h, y = make_data(N=500, C=9, d=5, seed=3, dtype=torch.float64)
    whole = CollapseStatistics(9, 5, covariance=covariance)
    whole.update(h, y)
    perm = torch.randperm(500, generator=torch.Generator().manual_seed(1))
    shuffled = CollapseStatistics(9, 5, covariance=covariance)
    for idx in perm.split(37):
        shuffled.update(h[idx], y[idx])
    parts = []
    for idx in perm.split(170):  # three "processes"
        p = CollapseStatistics(9, 5, covariance=covariance)
        p.update(h[idx], y[idx])
        parts.append(p)
    merged = parts[0].merge(parts[1]).merge(parts[2])
    for other in (shuffled, merged):
        torch.testing.assert_close(other.counts, whole.counts, rtol=0, atol=0)
        torch.testing.assert_close(other.means, whole.means, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(other.variances, whole.variances, rtol=1e-10, atol=1e-12)
        if covariance:
            torch.testing.assert_close(
                other.within_class_covariance(), whole.within_class_covariance(), rtol=1e-10, atol=1e-12
            )


def test_within_class_covariance_matches_dense():
    h, y = make_data(N=400, C=5, d=4, dtype=torch.float64)
    s = CollapseStatistics(5, 4, covariance=True)
    s.update(h, y)
    _, means, _ = dense_statistics(h.numpy(), y.numpy(), 5)
    dev = h.numpy() - means[y.numpy()]
    np.testing.assert_allclose(s.within_class_covariance().numpy(), dev.T @ dev / 400, rtol=1e-10, atol=1e-12)


def test_accepts_batched_sequences_and_numpy():
    h, y = make_data(N=60, C=4, d=3)
    s1 = CollapseStatistics(4, 3)
    s1.update(h.view(6, 10, 3), y.view(6, 10))  # (B, T, d)
    s2 = CollapseStatistics(4, 3)
    s2.update(h.numpy(), y.numpy())
    torch.testing.assert_close(s1.means, s2.means)
    s3 = CollapseStatistics(4, 3)
    s3.update(h.to(torch.bfloat16), y)  # low-precision input is accumulated in float64
    assert s3.means.dtype == torch.float64


def test_ignore_index_and_empty_batches():
    s = CollapseStatistics(3, 2)
    s.update(torch.zeros(4, 2), torch.full((4,), -100))
    assert s.num_tokens == 0
    with pytest.raises(ValueError, match="no labelled sample"):
        _ = s.global_mean
    s2 = CollapseStatistics(3, 2, ignore_index=7)
    s2.update(torch.ones(2, 2), torch.tensor([7, 1]))
    assert s2.counts.tolist() == [0.0, 1.0, 0.0]


@pytest.mark.parametrize(
    "features, labels, err, match",
    [
        (torch.zeros(4, 3), torch.tensor([0, 1, 2, 5]), ValueError, r"label 5 is outside \[0, 5\)"),
        (torch.zeros(4, 3), torch.tensor([0, -1, 2, 3]), ValueError, r"label -1 is outside"),
        (torch.zeros(4, 2), torch.tensor([0, 1, 2, 3]), ValueError, "dimension 2 but .* dim=3"),
        (torch.zeros(4, 3), torch.tensor([0, 1, 2]), ValueError, "does not match features shape"),
        (torch.zeros(3), torch.tensor([0, 1, 2]), ValueError, "must have shape"),
        (torch.zeros(4, 3, dtype=torch.long), torch.tensor([0, 1, 2, 3]), TypeError, "floating-point"),
        (torch.zeros(4, 3), torch.tensor([0.0, 1, 2, 3]), TypeError, "integer"),
        (torch.tensor([[0.0, 1, float("nan")]] * 4), torch.tensor([0, 1, 2, 3]), ValueError, "NaN or infinite"),
        ("features", torch.tensor([0]), TypeError, "torch.Tensor or numpy"),
    ],
)
def test_bad_input(features, labels, err, match):
    s = CollapseStatistics(5, 3)
    with pytest.raises(err, match=match):
        s.update(features, labels)
    assert s.num_tokens == 0  # nothing half-accumulated


def test_nonfinite_in_ignored_rows_is_fine():
    s = CollapseStatistics(2, 2)
    s.update(torch.tensor([[float("inf"), 0.0], [1.0, 2.0]]), torch.tensor([-100, 1]))
    assert s.counts.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_constructor(bad):
    with pytest.raises(ValueError):
        CollapseStatistics(bad, 3)
    with pytest.raises(ValueError):
        CollapseStatistics(3, bad)


def test_merge_mismatch():
    with pytest.raises(ValueError, match="cannot merge"):
        CollapseStatistics(3, 2).merge(CollapseStatistics(4, 2))
    with pytest.raises(TypeError):
        CollapseStatistics(3, 2).merge("x")


def test_save_load_roundtrip(tmp_path):
    h, y = make_data(N=200, C=6, d=4)
    s = CollapseStatistics(6, 4, covariance=True)
    s.update(h, y)
    s.metadata["dataset"] = "unit-test"
    path = tmp_path / "sub" / "statistics.safetensors"
    s.save(path, extra_tensors={"per_class.count": s.counts.clone()}, metadata={"k": "2.0"})
    assert [p.name for p in path.parent.iterdir()] == ["statistics.safetensors"]  # no temp files left
    t, extras = CollapseStatistics.load_with_extras(path)
    for name in ("counts", "means", "variances", "within_class_covariance"):
        a, b = getattr(s, name), getattr(t, name)
        a, b = (a(), b()) if callable(a) else (a, b)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert t.metadata["dataset"] == "unit-test" and t.metadata["k"] == "2.0"
    assert set(extras) == {"per_class.count"}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert meta["schema"] == "hf_collapse.statistics" and meta["num_classes"] == "6" and meta["dim"] == "4"
        assert meta["num_tokens"] == "200" and meta["dtype"] == "float64" and "library_version" in meta
        for name, shape in (("counts", [6]), ("means", [6, 4]), ("variances", [6])):
            t_ = f.get_tensor(name)
            assert t_.dtype == torch.float64 and list(t_.shape) == shape
    # loaded state keeps accumulating exactly like the original
    s.update(h[:50], y[:50])
    t.update(h[:50], y[:50])
    torch.testing.assert_close(s.variances, t.variances)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no statistics file"):
        CollapseStatistics.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="corrupt.safetensors.*not a readable safetensors"):
        CollapseStatistics.load(bad)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not an hf_collapse statistics file"):
        CollapseStatistics.load(foreign)
    s = CollapseStatistics(3, 2)
    s.update(torch.randn(5, 2), torch.tensor([0, 1, 2, 0, 1]))
    good = tmp_path / "good.safetensors"
    s.save(good)
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    newer = tmp_path / "newer.safetensors"
    save_file(tensors, str(newer), metadata={**meta, "schema_version": "99"})
    with pytest.raises(ValueError, match="schema version 99"):
        CollapseStatistics.load(newer)
    wrong = tmp_path / "wrong.safetensors"
    save_file({**tensors, "means": tensors["means"][:, :1].contiguous()}, str(wrong), metadata=meta)
    with pytest.raises(ValueError, match="'means' has shape"):
        CollapseStatistics.load(wrong)


def test_metadata_is_string_json_safe(tmp_path):
    from hf_collapse.core.io import metadata_json

    s = CollapseStatistics(2, 2)
    s.update(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
    s.save(tmp_path / "s.safetensors", metadata={"data": metadata_json({"files": ["a.txt"], "tokens": 4})})
    t = CollapseStatistics.load(tmp_path / "s.safetensors")
    assert json.loads(t.metadata["data"]) == {"files": ["a.txt"], "tokens": 4}


# ---------------------------------------------------------------- file format stability
# Canonical digests of files written by the code before the state declaration (issue 17) for a fixed input.
# safetensors writes the header's ``__metadata__`` in a random (hash) order, so the digest is over the
# header as sorted JSON plus the tensor bytes; the library version is fixed. The input is chosen so that
# every sum, shift and quotient is exact (integer features, first batches of 8 rows, counts powers of two):
# the digests do not depend on the BLAS or the vector width of the machine.
GOLDEN_DIGESTS = {
    (False, False): "91aeb3e5c834c3fcd83c0f508c760bfd2b23cdf0faa07f222f836e2521d1183f",
    (False, True): "5b5150331d8c8a2ca4b47b645b0c486cd1264276a9638781653765d3543718f0",
    (True, False): "3a672966499817c95e1b4dc2ae9734b1f67a220dda7e83a64c7c696b12a87a1d",
    (True, True): "456bbd469a7677f9b8fd3bb0267f3d1ee08190f365bb62e8bb048028745efc12",
}


def golden_input():
    y = torch.tensor([0, 0, 1, 1, 1, 1, 3, 2, -100, 2, 2, 2, 0, 0, 1, 1, 1, 1])
    g = torch.arange(len(y) * 3, dtype=torch.float64).reshape(-1, 3)
    return (g * 7 % 11 - 3 + 1000).to(torch.float32), y  # (18, 3), (18,)


def canonical_digest(path):
    import hashlib

    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode() + raw[8 + n :]).hexdigest()


@pytest.mark.parametrize("merged", [False, True])
@pytest.mark.parametrize("covariance, metadata", sorted(GOLDEN_DIGESTS))
def test_file_format_is_unchanged(tmp_path, monkeypatch, covariance, metadata, merged):
    import hf_collapse.core.statistics as statistics_module

    monkeypatch.setattr(statistics_module, "__version__", "0.0.0+golden")
    h, y = golden_input()
    s = CollapseStatistics(5, 3, covariance=covariance)
    s.update(h[:8], y[:8])
    if merged:  # a second part with another shift, re-centred exactly in merge: the same file as one pass
        s.update(h[8:10], y[8:10])
        other = CollapseStatistics(5, 3, covariance=covariance)
        other.update(h[10:], y[10:])
        s.merge(other)
    else:
        s.update(h[8:], y[8:])
    if metadata:
        s.metadata["dataset"] = "golden"
    path = tmp_path / "s.safetensors"
    s.save(
        path,
        extra_tensors={"per_class.count": s.counts.clone()} if metadata else None,
        metadata={"k": "2.0"} if metadata else None,
    )
    assert canonical_digest(path) == GOLDEN_DIGESTS[covariance, metadata]


def test_loads_files_with_the_removed_second_pass(tmp_path):
    # hf_collapse <= 0.1.0 wrote frozen_means (C, d), pass2_counts (C,), pass2_sq_sums (C,) after
    # begin_second_pass(): such files load, without those tensors among the extras, and keep accumulating
    from safetensors import safe_open
    from safetensors.torch import save_file

    h, y = make_data(N=200, C=6, d=4, dtype=torch.float64)
    s = CollapseStatistics(6, 4, covariance=True)
    s.update(h, y)
    path = tmp_path / "new.safetensors"
    s.save(path, extra_tensors={"per_class.count": s.counts.clone()})
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    legacy = tmp_path / "old.safetensors"
    pass2 = {"frozen_means": s.means, "pass2_counts": s.counts, "pass2_sq_sums": s.variances * s.counts}
    save_file({**tensors, **pass2}, str(legacy), metadata=meta)
    t, extras = CollapseStatistics.load_with_extras(legacy)
    assert set(extras) == {"per_class.count"}
    for name in ("counts", "sums", "sq_sums", "shift", "second_moment", "means", "variances"):
        torch.testing.assert_close(getattr(t, name), getattr(s, name), rtol=0, atol=0)
    t.update(h[:50], y[:50])
    s.update(h[:50], y[:50])
    torch.testing.assert_close(t.variances, s.variances, rtol=0, atol=0)
    assert not hasattr(t, "begin_second_pass")


@pytest.mark.parametrize("name", ["means", "second_moment", "pass2_counts"])
def test_extra_tensors_cannot_take_statistics_names(tmp_path, name):
    s = CollapseStatistics(2, 2)  # no covariance: "second_moment" is still reserved
    s.update(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="clashes"):
        s.save(tmp_path / "s.safetensors", extra_tensors={name: torch.zeros(2)})


@pytest.mark.parametrize("covariance", [False, True])
def test_merge_of_two_halves_equals_one_pass(covariance):
    h, y = make_data(N=640, C=7, d=5, seed=4, offset=50.0, dtype=torch.float64)
    one = CollapseStatistics(7, 5, covariance=covariance)
    one.update(h[:320], y[:320])  # one pass in two batches: the same first batch, so the same shift
    one.update(h[320:], y[320:])
    first, second = CollapseStatistics(7, 5, covariance=covariance), CollapseStatistics(7, 5, covariance=covariance)
    first.update(h[:320], y[:320])
    second.update(h[320:], y[320:])
    assert not torch.equal(first.shift, second.shift)
    merged = first.merge(second)
    assert merged is first and torch.equal(merged.shift, one.shift)  # the first half's first batch
    torch.testing.assert_close(merged.counts, one.counts, rtol=0, atol=0)
    torch.testing.assert_close(merged.sums, one.sums, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(merged.sq_sums, one.sq_sums, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(merged.means, one.means, rtol=1e-13, atol=0)
    torch.testing.assert_close(merged.variances, one.variances, rtol=1e-10, atol=0)
    if covariance:
        torch.testing.assert_close(merged.second_moment, one.second_moment, rtol=1e-12, atol=1e-8)


@pytest.mark.parametrize("covariance", [False, True])
def test_every_state_tensor_follows_the_declaration(tmp_path, covariance):
    from hf_collapse.core.statistics import DERIVED_TENSORS, STATE

    h, y = make_data(N=100, C=4, d=3, dtype=torch.float64)
    s = CollapseStatistics(4, 3, covariance=covariance)
    s.update(h, y)
    c = s.clone()
    names = [spec.name for spec in STATE if spec.optional is None or covariance]
    assert set(s.state_dict()) == set(names) | set(DERIVED_TENSORS)
    for spec in STATE:
        t = getattr(s, spec.name)
        if spec.name not in names:
            assert t is None and getattr(c, spec.name) is None
            continue
        assert t.shape == spec.shape(4, 3) and t.dtype == torch.float64
        assert torch.equal(getattr(c, spec.name), t) and getattr(c, spec.name) is not t  # clone copies
    s.save(tmp_path / "s.safetensors")
    t = CollapseStatistics.load(tmp_path / "s.safetensors")
    for name in names:
        assert torch.equal(getattr(t, name), getattr(s, name)), name


def test_streamed_safetensors_are_the_bytes_of_save_file(tmp_path, monkeypatch):
    """write_safetensors (rows a chunk at a time) writes exactly what safetensors.torch.save_file writes."""
    from safetensors.torch import save_file

    import hf_collapse.core.rows as rows
    from hf_collapse.core.io import Chunked, write_safetensors

    g = torch.Generator().manual_seed(0)
    tensors = {
        "w": torch.randn(37, 5, generator=g, dtype=torch.float64),
        "h": torch.randn(4, 3, 2, generator=g).bfloat16(),
        "ids": torch.arange(9),
        "flag": torch.tensor(True),
        "empty": torch.zeros(0, 4),
        "half": torch.randn(6, generator=g).half(),
        "u8": torch.arange(5, dtype=torch.uint8),
    }
    meta = {"k": "2.0", "schema": "x"}
    monkeypatch.setattr(rows, "CHUNK_BYTES", 24)  # a few rows per write
    save_file(tensors, tmp_path / "ref.safetensors")
    write_safetensors(tmp_path / "ours.safetensors", tensors)
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    # with metadata: safetensors orders the metadata keys as its hash map does; the rest is the same
    save_file(tensors, tmp_path / "ref.safetensors", metadata=meta)
    write_safetensors(tmp_path / "ours.safetensors", tensors, metadata=meta)
    assert canonical_digest(tmp_path / "ours.safetensors") == canonical_digest(tmp_path / "ref.safetensors")
    w = tensors["w"]
    chunked = {**tensors, "w": Chunked(torch.float64, (37, 5), lambda: (w[i : i + 10] for i in range(0, 37, 10)))}
    write_safetensors(tmp_path / "chunked.safetensors", chunked, metadata=meta)
    assert canonical_digest(tmp_path / "chunked.safetensors") == canonical_digest(tmp_path / "ref.safetensors")
    short = {"w": Chunked(torch.float64, (37, 5), lambda: iter([w[:3]]))}
    with pytest.raises(ValueError, match="'w': its chunks hold 120 bytes, its shape \\(37, 5\\) needs 1480"):
        write_safetensors(tmp_path / "short.safetensors", short)


def test_save_writes_the_means_without_a_class_by_feature_copy(tmp_path):
    """Saving allocates nothing of the size of the (C, d) sums: the means stream to the file a chunk at a
    time, and the statistics file still loads the same."""
    from torch.profiler import ProfilerActivity, profile

    C, d = 8192, 512  # (C, d) float64: 32 MiB, twice a row chunk
    s = CollapseStatistics(C, d)
    y = torch.arange(C)
    s.update(torch.randn(C, d), y)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        s.save(tmp_path / "s.safetensors")
    big = [e.name for e in prof.events() if e.cpu_memory_usage >= C * d * 8 * 0.9]
    assert big == [], big
    back = CollapseStatistics.load(tmp_path / "s.safetensors")
    torch.testing.assert_close(back.means, s.means, rtol=0, atol=0)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "s.safetensors"), framework="pt") as f:
        torch.testing.assert_close(f.get_tensor("means"), s.means, rtol=0, atol=0)
        torch.testing.assert_close(f.get_tensor("variances"), s.variances, rtol=0, atol=0)
