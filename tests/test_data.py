"""Built-in story corpus, tokenizer training, packing and file loaders."""

import collections

import pytest
import torch

from hf_collapse.integrations.data import EOS, PackedDataset, pack_texts, pack_token_ids, read_stories
from hf_collapse.study.corpus import generate_stories, train_tokenizer


def test_generator_deterministic_per_seed():
    a, b = generate_stories(50, seed=3), generate_stories(50, seed=3)
    assert a == b
    assert generate_stories(20, seed=3) == a[:20]  # story i depends only on (seed, i)
    assert generate_stories(50, seed=4) != a
    assert len(set(a)) > 45  # stories differ from each other


def test_generator_is_imbalanced_and_shares_openings():
    stories = generate_stories(1000, seed=0)
    words = collections.Counter(w.strip('.,!?"') for s in stories for w in s.split())
    freqs = sorted(words.values(), reverse=True)
    assert 150 <= len(words) <= 600  # a few hundred words
    assert freqs[0] > 20 * freqs[len(freqs) // 2]  # Zipf-like: head >> median
    names = collections.Counter(s.split(" named ")[1].split()[0].strip(".") for s in stories if " named " in s)
    top, rare = names.most_common()[0][1], names.most_common()[-1][1]
    assert top > 5 * rare  # imbalanced classes
    openings = collections.Counter(s.split(",")[0] for s in stories)
    assert openings.most_common(1)[0][1] > 0.3 * len(stories)  # shared story openings


def test_generator_rejects_bad_count():
    with pytest.raises(ValueError, match="num_stories"):
        generate_stories(-1)


def test_tokenizer_roundtrip_and_eos():
    stories = generate_stories(200, seed=1)
    tok = train_tokenizer(stories, vocab_size=300)
    assert len(tok) == 300
    assert tok.eos_token == EOS and tok.pad_token_id == tok.eos_token_id
    text = stories[0]
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(stories, vocab_size=100)


def test_pack_token_ids_gpt_style():
    blocks = pack_token_ids([[1, 2, 3], [4, 5], [6, 7, 8, 9]], block_size=4, eos_id=0)
    # stream: 1 2 3 0 4 5 0 6 7 8 9 0 -> three full rows, no tail
    assert blocks.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert pack_token_ids([[1, 2, 3], [4, 5]], block_size=2, eos_id=None).tolist() == [[1, 2], [3, 4]]
    assert pack_token_ids([list(range(100))], block_size=8, eos_id=0, max_blocks=3).shape == (3, 8)
    with pytest.raises(ValueError, match="fewer than one block"):
        pack_token_ids([[1, 2]], block_size=8, eos_id=0)
    with pytest.raises(ValueError, match="block_size"):
        pack_token_ids([[1, 2]], block_size=1, eos_id=0)


def test_pack_texts_and_dataset():
    stories = generate_stories(100, seed=2)
    tok = train_tokenizer(stories, vocab_size=300)
    blocks = pack_texts(stories, tok, block_size=32)
    n_tokens = sum(len(tok(s, add_special_tokens=False)["input_ids"]) + 1 for s in stories)
    assert blocks.shape == (n_tokens // 32, 32) and blocks.dtype == torch.long
    assert (blocks == tok.eos_token_id).sum() >= len(stories) - 2  # separators kept (tail dropped)
    ds = PackedDataset(blocks)
    assert len(ds) == blocks.shape[0] and torch.equal(ds[1]["labels"], blocks[1])


def test_read_stories_tinystories_format(tmp_path, shared_data):
    f = tmp_path / "t.txt"
    f.write_text(f"One story.\nSecond line.\n{EOS}\nAnother story.\n{EOS}\n")
    assert read_stories(f) == ["One story.\nSecond line.", "Another story."]
    real = read_stories(shared_data / "tinystories" / "train-head.txt", max_stories=10)
    assert len(real) == 10 and real[0].startswith("One day")
    with pytest.raises(FileNotFoundError):
        read_stories(tmp_path / "missing.txt")
