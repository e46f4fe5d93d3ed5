"""``hf-collapse demo``: the main job on a built-in default.

For now: a small classifier (2-layer MLP) trained on Gaussian class clusters that the package makes
itself, measured before and after training; prints the metric table. Training drives the features
towards collapse, so most measures move in the "more collapsed" direction.
"""

from __future__ import annotations

import argparse

import torch

from .measures import measure_collapse
from .statistics import CollapseStatistics


def _data(n, centres, g):
    num_classes, in_dim = centres.shape
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, in_dim, generator=g)
    return x, y


def run_demo(num_classes=20, in_dim=32, dim=16, steps=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    centres = torch.randn(num_classes, in_dim, generator=g) * 1.5
    x, y = _data(8000, centres, g)
    x_test, y_test = _data(2000, centres, g)
    body = torch.nn.Sequential(torch.nn.Linear(in_dim, 64), torch.nn.GELU(), torch.nn.Linear(64, dim))
    head = torch.nn.Linear(dim, num_classes, bias=False)

    def measure():
        with torch.no_grad():
            stats = CollapseStatistics(num_classes, dim)
            stats.update(body(x), y)
            return measure_collapse(stats, weights=head.weight, features=body(x_test), labels=y_test)

    before = measure()
    opt = torch.optim.AdamW(list(body.parameters()) + list(head.parameters()), lr=3e-3, weight_decay=0.1)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (256,), generator=g)
        loss = torch.nn.functional.cross_entropy(head(body(x[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, measure()


def run(args) -> int:
    before, after = run_demo(steps=args.steps, seed=args.seed)
    print(f"{'measure':<24} {'at init':>12} {'trained':>12}")
    for key in after:
        print(f"{key:<24} {before[key]:>12.5g} {after[key]:>12.5g}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the built-in demonstration")
    p.add_argument("--steps", type=int, default=300, help="training steps")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
