"""The text -> token blocks pipeline: document splitting, the Arrow cache, streaming, the exact budget, bad input."""

import pytest
import torch

import hf_collapse.integrations.data as data
from hf_collapse.cli import main
from hf_collapse.integrations.data import (
    EOS,
    StreamingTokenBlocks,
    TokenBlocks,
    budget_end,
    iter_documents,
    load_text_dataset,
    split_documents,
    text_blocks,
)


@pytest.fixture(scope="module")
def gpt2(shared_data):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared_data / "tokenizers" / "gpt2")


@pytest.fixture(scope="module")
def llama_tok(shared_data):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared_data / "models" / "stories260K")


def test_documents_split_on_eos_lines_else_blank_lines(tmp_path):
    eos = tmp_path / "eos.txt"
    eos.write_text(f"One story.\n\nIts second paragraph.\n{EOS}\nAnother story.\n{EOS}\n\n")
    assert list(iter_documents(eos)) == ["One story.\n\nIts second paragraph.", "Another story."]
    blank = tmp_path / "blank.txt"
    blank.write_text("First text\nstill first.\n\n\nSecond text.\n  \nThird.")
    assert list(iter_documents(blank)) == ["First text\nstill first.", "Second text.", "Third."]
    assert list(split_documents(["a", EOS, "", EOS, "b"], "eos")) == ["a", "b"]
    ds = load_text_dataset(eos)
    assert ds.column_names == ["text"] and ds["text"] == list(iter_documents(eos))
    with pytest.raises(ValueError, match="fmt"):
        list(split_documents(["a"], "lines"))


def test_real_files_both_formats(shared_data):
    train = list(iter_documents(shared_data / "tinystories" / "train-head.txt"))
    assert len(train) == 2317 and train[0].startswith("One day") and all(EOS not in d for d in train)
    val = list(iter_documents(shared_data / "tinystories" / "validation-head.txt"))  # blank-line format
    assert len(val) > 100 and all("\n\n" not in d for d in val)


def test_tokenization_is_cached_and_not_rerun(tmp_path, shared_data, gpt2, monkeypatch):
    calls = []
    real = data._Tokenize.__call__

    def counting(self, batch):
        calls.append(len(batch["text"]))
        return real(self, batch)

    monkeypatch.setattr(data._Tokenize, "__call__", counting)
    cache = str(tmp_path / "cache")
    path = shared_data / "tinystories" / "train-head.txt"
    a = text_blocks(gpt2, 128, files=path, cache_dir=cache, num_proc=1)
    assert sum(calls) == 2317  # every document tokenized once
    calls.clear()
    b = text_blocks(gpt2, 128, files=path, cache_dir=cache, num_proc=1)
    assert calls == []  # the second run read the Arrow cache: the map did not run again
    assert len(a) == len(b) and torch.equal(a[len(a) - 1], b[len(b) - 1])
    assert a.stream.dataset.cache_files == b.stream.dataset.cache_files
    assert all(f["filename"].startswith(cache) for f in b.stream.dataset.cache_files)
    # tokens stored as uint16 for GPT-2's 50,257 ids, read back without copying the corpus
    assert b.stream.chunks[0].dtype.name == "uint16"
    # another tokenizer is another cache entry
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(shared_data / "models" / "stories260K")
    c = text_blocks(other, 128, files=path, cache_dir=cache, num_proc=1)
    assert sum(calls) == 2317 and len(c) != len(a)


def test_blocks_are_the_stream_cut_exactly(tmp_path, llama_tok):
    f = tmp_path / "t.txt"
    f.write_text("\n\n".join(f"Story number {i} about a cat and a dog." for i in range(60)))
    docs = list(iter_documents(f))
    stream = [t for d in docs for t in [llama_tok.bos_token_id] + llama_tok(d, add_special_tokens=False)["input_ids"]]
    T = 16
    full = text_blocks(llama_tok, T, files=f, cache_dir=str(tmp_path / "c"))
    got = torch.cat([full[i] for i in range(len(full))]).tolist()
    assert got == stream[: len(got)] and len(stream) - len(got) <= 1  # a last lone token has no label
    assert all(len(full[i]) == T for i in range(len(full) - 1))
    for budget in (1, T - 1, T, 3 * (T - 1), 3 * (T - 1) + 5, 100):
        blocks = text_blocks(llama_tok, T, files=f, cache_dir=str(tmp_path / "c"), max_tokens=budget)
        labelled = sum(len(blocks[i]) - 1 for i in range(len(blocks)))
        assert labelled == budget == blocks.num_labelled, budget
        assert torch.cat([blocks[i] for i in range(len(blocks))]).tolist() == stream[: budget_end(budget, T)]
    huge = text_blocks(llama_tok, T, files=f, cache_dir=str(tmp_path / "c"), max_tokens=10**9)
    assert huge.num_labelled == full.num_labelled  # a budget beyond the data: all of it
    packed = text_blocks(
        llama_tok, T, files=f, cache_dir=str(tmp_path / "c"), bos=False, eos=True, drop_last=True, examples=True
    )
    ex = packed[0]
    assert set(ex) == {"input_ids", "labels"} and len(ex["input_ids"]) == T
    assert all(len(packed[i]["input_ids"]) == T for i in range(len(packed)))
    assert (packed.to_tensor() == llama_tok.eos_token_id).sum() >= 50


def test_streaming_gives_the_same_blocks_and_statistics(tmp_path, shared_data, llama_tok):
    from transformers import AutoModelForCausalLM

    from hf_collapse.integrations.data import collate
    from hf_collapse.integrations.passes import collect_statistics

    path = shared_data / "tinystories" / "train-head.txt"
    for budget, drop_last in ((None, False), (2000, False), (2000, True), (127 * 7, False)):
        cached = text_blocks(
            llama_tok, 128, files=path, cache_dir=str(tmp_path), max_tokens=budget, drop_last=drop_last
        )
        streamed = text_blocks(llama_tok, 128, files=path, streaming=True, max_tokens=budget, drop_last=drop_last)
        assert isinstance(cached, TokenBlocks) and isinstance(streamed, StreamingTokenBlocks)
        s = list(streamed)
        assert len(s) == len(cached) and all(torch.equal(a, cached[i]) for i, a in enumerate(s)), budget
    model = AutoModelForCausalLM.from_pretrained(shared_data / "models" / "stories260K").eval()
    loaders = [torch.utils.data.DataLoader(b, batch_size=4, collate_fn=collate) for b in (cached, streamed)]
    a, b = (collect_statistics(model, dl, progress=False) for dl in loaders)
    assert a.num_tokens == b.num_tokens == 127 * 7
    assert torch.equal(a.counts, b.counts) and torch.equal(a.sums, b.sums)


def test_in_memory_texts(llama_tok):
    from hf_collapse.integrations.data import blocks_from_texts

    texts = ["Once upon a time there was a cat.", "", "The dog ran home fast."]
    blocks = blocks_from_texts(texts, llama_tok, 5, max_tokens=7)
    assert [len(blocks[i]) for i in range(len(blocks))] == [5, 4] and blocks.num_labelled == 7
    assert blocks[0][0] == llama_tok.bos_token_id
    with pytest.raises(ValueError, match="block_size"):
        blocks_from_texts(texts, llama_tok, 1)


def test_bad_input_gives_one_line_errors(tmp_path, shared_data, llama_tok, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text(f"\n  \n{EOS}\n")
    with pytest.raises(ValueError, match="holds no text"):
        text_blocks(llama_tok, 8, files=empty)
    with pytest.raises(FileNotFoundError, match="no text file"):
        text_blocks(llama_tok, 8, files=tmp_path / "nope.txt")
    notdir = tmp_path / "a_file"
    notdir.write_text("x")
    with pytest.raises(ValueError, match="cannot write the datasets cache directory"):
        text_blocks(llama_tok, 8, files=shared_data / "tinystories" / "train-head.txt", cache_dir=str(notdir / "c"))
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "data.csv").write_text("story\nOnce upon a time\n")
    with pytest.raises(ValueError, match="no column 'text'.*--text-column"):
        text_blocks(llama_tok, 8, dataset=str(ds))
    with pytest.raises(ValueError, match="could not load dataset"):
        load_text_dataset(dataset=str(tmp_path / "no_such_dataset"))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(ValueError, match="not UTF-8"):
        text_blocks(llama_tok, 8, files=binary)
    # fewer tokens than one block: one shorter block, measured
    short = tmp_path / "short.txt"
    short.write_text("A cat.")
    blocks = text_blocks(llama_tok, 256, files=short, cache_dir=str(tmp_path / "c"))
    assert len(blocks) == 1 and 2 <= len(blocks[0]) < 256
    # the CLI: one line, no traceback, and a budget beyond the data is measured whole with a note
    model = str(shared_data / "models" / "stories260K")
    cache = ["--cache-dir", str(tmp_path / "c")]
    assert (
        main(
            [
                "measure",
                model,
                "--train-file",
                str(short),
                "--max-tokens",
                "1000",
                "--no-progress",
                "--no-reuse",
                *cache,
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert "fewer than the budget of 1,000: measuring all of them" in out.err and "tokens=" in out.out
    assert main(["measure", model, "--train-file", str(empty), "--no-progress", *cache]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "no labelled token" in errors[0] and "Traceback" not in err
    assert main(["measure", model, "--train-file", str(short), "--no-progress", "--cache-dir", str(notdir / "c")]) == 1
    assert "cannot write the datasets cache directory" in capsys.readouterr().err
    assert main(["measure", model, "--train-file", str(short), "--block-size", "1", "--no-progress"]) == 1
    assert "--block-size" in capsys.readouterr().err
