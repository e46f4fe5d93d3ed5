"""Hook-based collection: label alignment, budget, resume, layer-wise, NC4 and bad input."""

import pytest
import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from hf_collapse import CollapseArguments, CollapseStatistics, measure_collapse
from hf_collapse.integrations.hooks import FeatureHooks, align_labels
from hf_collapse.integrations.passes import collect_nc4, collect_statistics, measure_model

V, D = 40, 16


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = GPTNeoConfig(
        vocab_size=V,
        hidden_size=D,
        num_layers=2,
        num_heads=2,
        attention_types=[[["global"], 2]],
        max_position_embeddings=64,
        intermediate_size=32,
    )
    return GPTNeoForCausalLM(cfg).eval()


def batches(n=6, B=3, T=12, seed=1, pad=True):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, V, (B, T), generator=g)
        mask = torch.ones(B, T, dtype=torch.long)
        if pad:
            mask[0, T - 4 :] = 0  # right padding in the first row
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def manual(model, data, max_tokens=None):
    """Reference: last hidden states (= lm_head input) with shifted, masked labels."""
    H, Y = [], []
    with torch.no_grad():
        for b in data:
            h = model(**b, output_hidden_states=True).hidden_states[-1]  # (B, T, d)
            y = b["input_ids"][:, 1:].clone()
            m = b["attention_mask"].bool()
            y[~(m[:, :-1] & m[:, 1:])] = -100
            H.append(h[:, :-1].reshape(-1, D))
            Y.append(y.reshape(-1))
    H, Y = torch.cat(H), torch.cat(Y)
    H, Y = H[Y != -100], Y[Y != -100]
    if max_tokens is not None:
        H, Y = H[:max_tokens], Y[:max_tokens]
    return H, Y


def test_statistics_match_manual_features():
    model, data = tiny_model(), batches()
    stats = collect_statistics(model, data, progress=False)
    H, Y = manual(model, data)
    ref = CollapseStatistics(V, D)
    ref.update(H, Y)
    assert stats.num_tokens == Y.numel() == 6 * (3 * 11 - 4)  # padding and last positions dropped
    torch.testing.assert_close(stats.counts, ref.counts)
    torch.testing.assert_close(stats.means, ref.means, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(stats.variances, ref.variances, rtol=1e-6, atol=1e-8)
    assert model.training is False


def test_labels_key_overrides_input_ids_and_minus_100():
    ids = torch.tensor([[5, 6, 7, 8]])
    labels = torch.tensor([[5, -100, 7, 9]])
    _, y = align_labels(torch.zeros(1, 4, 3), {"input_ids": ids, "labels": labels}, "causal_lm")
    assert y.tolist() == [[-100, 7, 9, -100]]
    _, y = align_labels(torch.zeros(1, 4, 3), {"input_ids": ids}, "causal_lm")
    assert y.tolist() == [[6, 7, 8, -100]]


def test_sequence_classification_picks_last_non_pad_token():
    h = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    ids = torch.tensor([[3, 4, 0, 0], [3, 4, 5, 6]])
    f, y = align_labels(
        h, {"input_ids": ids, "labels": torch.tensor([1, 0])}, "sequence_classification", pad_token_id=0
    )
    assert torch.equal(f, torch.stack([h[0, 1], h[1, 3]])) and y.tolist() == [1, 0]


def test_budget_is_exact_and_hooks_removed():
    model, data = tiny_model(), batches()
    stats = collect_statistics(model, data, settings=CollapseArguments(collapse_max_tokens=50), progress=False)
    assert stats.num_tokens == 50
    H, Y = manual(model, data, max_tokens=50)
    ref = CollapseStatistics(V, D)
    ref.update(H, Y)
    torch.testing.assert_close(stats.means, ref.means, rtol=1e-6, atol=1e-8)
    assert not model._forward_pre_hooks and not model.lm_head._forward_pre_hooks
    assert not model.lm_head._forward_hooks


class Interrupting:
    """Yields the batches but raises after ``stop`` of them (a crashed run)."""

    def __init__(self, data, stop=None):
        self.data, self.stop = data, stop

    def __len__(self):
        return len(self.data)

    def __iter__(self):
        for i, b in enumerate(self.data):
            if self.stop is not None and i == self.stop:
                raise KeyboardInterrupt("simulated crash")
            yield b


def test_resume_gives_same_numbers(tmp_path):
    model, data = tiny_model(), batches(n=7)
    full = collect_statistics(model, data, progress=False)
    ck = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        collect_statistics(model, Interrupting(data, stop=5), progress=False, checkpoint_path=ck, checkpoint_every=2)
    assert (ck / "latest.json").is_file() and not list(ck.glob("**/.tmp-*"))
    resumed = collect_statistics(model, Interrupting(data), progress=False, checkpoint_path=ck, checkpoint_every=2)
    assert torch.equal(resumed.counts, full.counts)
    torch.testing.assert_close(resumed.means, full.means, rtol=0, atol=1e-12)
    torch.testing.assert_close(resumed.variances, full.variances, rtol=0, atol=1e-12)
    # another model cannot resume from it
    with pytest.raises(ValueError, match="another model, data or settings"):
        collect_statistics(tiny_model(seed=3), data, progress=False, checkpoint_path=ck, checkpoint_every=2)


def test_layerwise_and_measure_model():
    model, data, test = tiny_model(), batches(n=4), batches(n=3, seed=7)
    out = collect_statistics(
        model, data, settings=CollapseArguments(collapse_modules=["transformer.h.1", "lm_head"]), progress=False
    )
    assert list(out) == ["transformer.h.1", "lm_head"]
    single = collect_statistics(model, data, progress=False)
    torch.testing.assert_close(out["lm_head"].means, single.means)
    # transformer.h.1's input is block 0's output: differs from the head input
    assert not torch.allclose(out["transformer.h.1"].means, single.means)
    rep = measure_model(
        model, data, test, settings=CollapseArguments(collapse_modules=["lm_head", "transformer.h.1"]), progress=False
    )
    m = rep.metrics("eval")
    assert "eval_nc1_cdnv" in m and "eval_transformer_h_1_nc1_cdnv" in m
    assert "eval_nc4_agreement" in m and "eval_transformer_h_1_ncc_accuracy" in m
    assert "eval_transformer_h_1_nc4_agreement" not in m  # no classifier at an inner layer


def test_nc4_matches_core_with_features():
    model, data, test = tiny_model(), batches(n=4), batches(n=3, seed=7)
    stats = collect_statistics(model, data, progress=False)
    got = collect_nc4(model, test, stats, settings=CollapseArguments(collapse_dtype=torch.float64), progress=False)[
        "lm_head"
    ]
    Ht, Yt = manual(model, test)
    ref = measure_collapse(stats, weights=model.lm_head.weight, features=Ht, labels=Yt, dtype=torch.float64)
    assert got["nc4_agreement"] == pytest.approx(ref["nc4_agreement"], abs=1e-12)
    assert got["ncc_accuracy"] == pytest.approx(ref["ncc_accuracy"], abs=1e-12)


def test_bad_input():
    model = tiny_model()
    body = model.transformer
    with pytest.raises(ValueError, match="no output embeddings"):
        FeatureHooks(body)
    with pytest.raises(ValueError, match="no submodule"):
        collect_statistics(model, batches(1), settings=CollapseArguments(collapse_modules="nope"), progress=False)
    with pytest.raises(ValueError, match="no labelled token"):
        collect_statistics(model, [], progress=False)
    allpad = [{"input_ids": torch.zeros(2, 5, dtype=torch.long), "attention_mask": torch.zeros(2, 5, dtype=torch.long)}]
    with pytest.raises(ValueError, match="no labelled token"):
        collect_statistics(model, allpad, progress=False)
    with pytest.raises(ValueError, match="outside"):
        collect_statistics(
            model,
            [{"input_ids": torch.zeros(1, 4, dtype=torch.long), "labels": torch.tensor([[0, 1, V + 3, 2]])}],
            progress=False,
        )
    with pytest.raises(ValueError, match="max_tokens"):
        collect_statistics(model, batches(1), settings=CollapseArguments(collapse_max_tokens=0), progress=False)


def test_sequence_classification_head_on_every_token():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(
        GPT2Config(vocab_size=V, n_embd=D, n_layer=1, n_head=2, n_positions=32, num_labels=3, pad_token_id=0)
    ).eval()
    g = torch.Generator().manual_seed(2)
    data = []
    for _ in range(4):
        ids = torch.randint(1, V, (4, 8), generator=g)
        ids[0, 5:] = 0  # padded row: the model pools position 4
        data.append(
            {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": torch.randint(0, 3, (4,), generator=g)}
        )
    stats = collect_statistics(
        model,
        data,
        settings=CollapseArguments(collapse_modules="score", collapse_task="sequence_classification"),
        progress=False,
    )
    ref = CollapseStatistics(3, D)
    with torch.no_grad():
        for b in data:
            h = model.transformer(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            last = torch.tensor([4, 7, 7, 7])  # last non-pad token of each row
            ref.update(h[torch.arange(4), last], b["labels"])
    assert stats.num_tokens == 16
    torch.testing.assert_close(stats.means, ref.means, rtol=1e-5, atol=1e-6)
    rep = measure_model(
        model,
        data,
        data,
        settings=CollapseArguments(collapse_modules="score", collapse_task="sequence_classification"),
        progress=False,
    )
    assert 0 <= rep.result["nc4_agreement"] <= 1 and "nc3_duality_mean" in rep.result


def test_token_classification():
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    model = BertForTokenClassification(
        BertConfig(
            vocab_size=V,
            hidden_size=D,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=4,
            max_position_embeddings=32,
        )
    ).eval()
    g = torch.Generator().manual_seed(3)
    data = []
    for _ in range(3):
        labels = torch.randint(0, 4, (2, 10), generator=g)
        labels[:, 0] = -100  # e.g. [CLS]
        data.append({"input_ids": torch.randint(0, V, (2, 10), generator=g), "labels": labels})
    stats = collect_statistics(
        model,
        data,
        settings=CollapseArguments(collapse_modules="classifier", collapse_task="token_classification"),
        progress=False,
    )
    ref = CollapseStatistics(4, D)
    with torch.no_grad():
        for b in data:
            ref.update(model.bert(input_ids=b["input_ids"]).last_hidden_state, b["labels"])
    assert stats.num_tokens == 3 * 2 * 9
    torch.testing.assert_close(stats.means, ref.means, rtol=1e-5, atol=1e-6)


def test_statistics_of_another_model_are_rejected():
    model = tiny_model()
    wrong = CollapseStatistics(V + 1, D)
    wrong.update(torch.randn(10, D), torch.arange(10))
    with pytest.raises(ValueError, match="do not match the classifier"):
        collect_nc4(model, batches(1), wrong, progress=False)
    from hf_collapse.integrations.passes import measure_statistics

    wrong_d = CollapseStatistics(V, D + 2)
    wrong_d.update(torch.randn(10, D + 2), torch.arange(10))
    with pytest.raises(ValueError, match="do not match the classifier"):
        measure_statistics(model, wrong_d)
