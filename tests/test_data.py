"""Built-in story corpus, tokenizer training, GPT-style packing and document loaders."""

import collections
import itertools

import pytest
import torch

from hf_collapse.integrations.data import EOS, blocks_from_texts, iter_documents
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


def test_blocks_from_texts_gpt_style():
    stories = generate_stories(100, seed=2)
    tok = train_tokenizer(stories, vocab_size=300)
    blocks = blocks_from_texts(stories, tok, 32, bos=False, eos=True, drop_last=True)
    n_tokens = sum(len(tok(s, add_special_tokens=False)["input_ids"]) + 1 for s in stories)
    stacked = blocks.to_tensor()
    assert stacked.shape == (n_tokens // 32, 32) and stacked.dtype == torch.long
    assert (stacked == tok.eos_token_id).sum() >= len(stories) - 2  # separators kept (tail dropped)


def test_iter_documents_tinystories_format(tmp_path, shared_data):
    f = tmp_path / "t.txt"
    f.write_text(f"One story.\nSecond line.\n{EOS}\nAnother story.\n{EOS}\n")
    assert list(iter_documents(f)) == ["One story.\nSecond line.", "Another story."]
    real = list(itertools.islice(iter_documents(shared_data / "tinystories" / "train-head.txt"), 10))
    assert len(real) == 10 and real[0].startswith("One day")
    with pytest.raises(FileNotFoundError):
        list(iter_documents(tmp_path / "missing.txt"))
