"""The ``neural_collapse`` evaluate module on features from a model, in both configurations.

``hf_collapse.load_metric()`` loads the module shipped in the package (no registration, no Hub
request). The bare name ``evaluate.load("neural_collapse")`` works too, once
``hf-collapse install-metric`` has been run in this cache.

    python examples/evaluate_metric.py
"""

import argparse
import random

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import hf_collapse


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048, help="tokens to feed (bytes of generated text)")
    p.add_argument("--statistics-file", default="nc_statistics.safetensors")
    args = p.parse_args(argv)
    rng = random.Random(0)
    text = " ".join(rng.choice("the a cat dog saw ran home big small red".split()) for _ in range(args.tokens))
    ids = torch.tensor(list(text.encode())[: args.tokens // 64 * 64]).view(-1, 64)  # (B, 64) byte tokens
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=256, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=None, eos_token_id=None)
    ).eval()
    W = model.get_output_embeddings().weight.detach()  # (256, 32) classifier rows

    nc = hf_collapse.load_metric()  # or: evaluate.load("neural_collapse") after `hf-collapse install-metric`
    stats = hf_collapse.CollapseStatistics(num_classes=256, dim=32)
    with torch.no_grad():
        for batch in ids.split(8):
            h = model(batch, output_hidden_states=True).hidden_states[-1]  # (b, 64, 32) input of lm_head
            h, y = h[:, :-1].reshape(-1, 32), batch[:, 1:].reshape(-1)  # position t predicts token t+1
            nc.add_batch(features=h.numpy(), labels=y.numpy())  # one Arrow row per batch
            stats.update(h, y)  # the same, as float64 sums
    results = nc.compute(weights=W.numpy())
    print("features configuration:  ", {k: round(v, 6) for k, v in results.items()})

    stats.save(args.statistics_file)  # token-scale data: pass statistics, never the features
    from_stats = hf_collapse.load_metric("statistics").compute(statistics=args.statistics_file, weights=W.numpy())
    print("statistics configuration:", {k: round(v, 6) for k, v in from_stats.items()})
    return results, from_stats


if __name__ == "__main__":
    main()
