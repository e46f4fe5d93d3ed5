"""Throughput of hf_collapse.integrations.weights_hash.weights_sha256 on a folder and on in-memory tensors.

python scripts/benchmark_weights_hash.py [--mb 240]
"""

import argparse
import os
import tempfile
import time

import torch
from safetensors.torch import save_file

from hf_collapse.integrations.weights_hash import weights_sha256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=240, help="float32 megabytes of weights to hash")
    args = parser.parse_args()
    cols = 1024 * 6  # 24 MiB per tensor
    tensors = {f"w{i}": torch.randn(1024, cols) for i in range(max(1, args.mb // 24))}
    mb = sum(t.numel() * 4 for t in tensors.values()) / 2**20
    with tempfile.TemporaryDirectory() as d:
        save_file(tensors, os.path.join(d, "model.safetensors"))
        t0 = time.perf_counter()
        h_folder = weights_sha256(d)
        t1 = time.perf_counter()
        h_memory = weights_sha256(tensors)
        t2 = time.perf_counter()
    print(
        f"{mb:.0f} MiB: folder {mb / (t1 - t0):.0f} MiB/s, in memory {mb / (t2 - t1):.0f} MiB/s, "
        f"equal={h_folder == h_memory}"
    )


if __name__ == "__main__":
    main()
