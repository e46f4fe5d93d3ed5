"""hf-collapse tokens: per-class rankings and lookups from a measured folder this test builds."""

import json

import pytest
import torch

from hf_collapse import CollapseStatistics, cli, measure_collapse
from hf_collapse.integrations.token_report import load_per_class, token_report
from hf_collapse.study.corpus import generate_stories, train_tokenizer


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Statistics over the tokens of a trained tokenizer; ' Lily' planted near the global centre."""
    out = tmp_path_factory.mktemp("measured")
    tok = train_tokenizer(generate_stories(300, seed=0), vocab_size=400)
    tok.save_pretrained(out)
    lily = tok(" Lily", add_special_tokens=False)["input_ids"]
    assert len(lily) == 1
    lily = lily[0]
    g = torch.Generator().manual_seed(0)
    C, d = len(tok), 16
    present = torch.arange(40, 140)
    present = torch.unique(torch.cat([present, torch.tensor([lily])]))
    means = torch.randn(C, d, generator=g) * 5
    means[lily] = means[present].mean(0) + 0.05 * torch.randn(d, generator=g)  # centred norm ~0.2
    labels = present.repeat_interleave(20)  # (N,)
    features = means[labels] + 0.3 * torch.randn(len(labels), d, generator=g)  # (N, d)
    stats = CollapseStatistics(C, d)
    stats.update(features, labels)
    weights = torch.randn(C, d, generator=g)
    result = measure_collapse(stats, weights=weights, per_class=True)
    stats.save(
        out / "collapse" / "statistics.safetensors",
        extra_tensors={f"per_class.{k}": v for k, v in result.per_class.items()},
    )
    return out, tok, lily


def test_rankings_find_planted_token(folder):
    out, tok, lily = folder
    rep = token_report(out, tok, top=3, lookup=["Lily", "zzqx"])
    smallest = rep["rankings"]["mean_norm"]["smallest"]
    assert smallest[0]["token_id"] == lily and smallest[0]["text"] == " Lily"
    assert smallest[0]["mean_norm"] < 0.5 * rep["average"]["mean_norm"]
    largest = rep["rankings"]["cdnv_row_mean"]["largest"]
    assert largest[0]["cdnv_row_mean"] >= largest[-1]["cdnv_row_mean"]
    assert rep["num_classes"] == 101 and rep["average"]["count"] == pytest.approx(20.0)
    hit = rep["lookup"][0]["matches"]
    assert any(m["token_id"] == lily and not m.get("absent") for m in hit)
    assert rep["lookup"][1]["matches"] == []  # not a single token


def test_cli_prints_and_writes_json(folder, tmp_path, capsys):
    out, _, lily = folder
    js = tmp_path / "tokens.json"
    assert cli.main(["tokens", str(out), "--top", "4", "--lookup", "Lily", "--json", str(js)]) == 0
    text = capsys.readouterr().out
    assert "## smallest mean_norm" in text and '" Lily"' in text and "(average token)" in text
    assert json.loads(js.read_text())["rankings"]["mean_norm"]["smallest"][0]["token_id"] == lily


def test_folder_without_per_class_outputs_is_a_clear_error(tmp_path):
    stats = CollapseStatistics(5, 2)
    stats.update(torch.randn(10, 2), torch.arange(10) % 5)
    stats.save(tmp_path / "collapse" / "statistics.safetensors")
    with pytest.raises(ValueError, match="per-class outputs"):
        load_per_class(tmp_path)
    assert cli.main(["tokens", str(tmp_path / "missing")]) == 1
