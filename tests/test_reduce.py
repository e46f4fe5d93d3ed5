"""reduce(): the all-reduce over torch.distributed gives the single-process statistics (gloo, 2 processes)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port

from hf_collapse import CollapseStatistics, measure_collapse


def data():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 30, (900,), generator=g)
    y[y == 5] = 6  # an absent class
    h = (
        torch.randn(30, 8, generator=g, dtype=torch.float64)[y] * 3
        + 1e3
        + torch.randn(900, 8, generator=g, dtype=torch.float64)
    )
    return h, y


def worker(rank, world, port, out_dir, covariance):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        h, y = data()
        s = CollapseStatistics(30, 8, covariance=covariance)
        # uneven split; rank 1 starts with a different first batch -> a different shift
        idx = torch.arange(900)
        mine = idx[:250] if rank == 0 else idx[250:]
        for chunk in mine.split(64):
            s.update(h[chunk], y[chunk])
        s.reduce()
        s.save(os.path.join(out_dir, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_reduce_matches_one_process(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path), True), nprocs=2, join=True)
    h, y = data()
    ref = CollapseStatistics(30, 8, covariance=True)
    ref.update(h, y)
    res_ref = measure_collapse(ref, dtype=torch.float64)
    for rank in range(2):
        s = CollapseStatistics.load(tmp_path / f"rank{rank}.safetensors")
        torch.testing.assert_close(s.counts, ref.counts, rtol=0, atol=0)
        torch.testing.assert_close(s.means, ref.means, rtol=1e-12, atol=0)
        torch.testing.assert_close(s.variances, ref.variances, rtol=1e-8, atol=0)
        torch.testing.assert_close(s.within_class_covariance(), ref.within_class_covariance(), rtol=1e-7, atol=1e-9)
        res = measure_collapse(s, dtype=torch.float64)
        for key in res_ref:
            assert abs(res[key] - res_ref[key]) <= 1e-8 * abs(res_ref[key]), key


def test_reduce_is_noop_without_process_group():
    s = CollapseStatistics(3, 2)
    s.update(torch.randn(4, 2), torch.tensor([0, 1, 2, 1]))
    before = s.means.clone()
    assert s.reduce() is s
    torch.testing.assert_close(s.means, before)
