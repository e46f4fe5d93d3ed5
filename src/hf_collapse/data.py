"""Text for the study: a built-in story corpus, tokenizers, GPT-style packing, file and Hub loaders.

The built-in corpus (``generate_stories``) stands in for TinyStories where the real text is not at
hand (the demo, tests). It is procedural but built to have the properties that matter for
collapse: a Zipf-like vocabulary (so token classes are heavily imbalanced), story openings shared
by most stories (so many contexts are ambiguous: after "named" any name can follow) and entities
that recur within a story (so a model with attention can learn more than bigram statistics).
It is deterministic per seed: story ``i`` of seed ``s`` depends only on ``(s, i)``.

Packing (``pack_texts``) follows GPT/TinyStories practice: every text is tokenized, followed by the
end-of-text token, all are concatenated, and the stream is cut into chunks of ``block_size``
tokens; the ragged tail is dropped. Labels are the inputs (the model shifts them).
"""

from __future__ import annotations

import logging
import os
import random
from typing import Iterable, Optional, Sequence

import torch

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"
DEFAULT_HUB_DATASET = "roneneldan/TinyStories"

# ---------------------------------------------------------------------------------------------
# built-in procedural stories

_GIRLS = ["Lily", "Mia", "Sue", "Anna", "Lucy", "Zoe", "Emma", "Kate", "Amy", "Ella", "Rose", "Jane",
          "Ruby", "Daisy", "Molly", "Sara"]
_BOYS = ["Tom", "Ben", "Tim", "Max", "Sam", "Jack", "Leo", "Bob", "Joe", "Finn", "Jake", "Dan", "Ned",
         "Pip", "Ray", "Zack"]
_ANIMALS = ["dog", "cat", "bird", "bunny", "fish", "frog", "bear", "duck", "mouse", "lion", "owl", "fox",
            "pig", "cow", "horse", "turtle", "bee", "puppy", "kitten", "monkey"]
_OBJECTS = ["ball", "toy", "kite", "box", "hat", "car", "book", "cake", "flower", "stone", "boat",
            "drum", "doll", "cup", "shell", "key", "map", "bell", "truck", "apple", "balloon", "crayon"]
_PLACES = ["park", "garden", "forest", "house", "school", "beach", "river", "farm", "town", "hill",
           "lake", "yard", "shop", "cave"]
_ADJS = ["big", "little", "red", "shiny", "old", "new", "blue", "soft", "tiny", "green", "pretty",
         "funny", "yellow", "round", "dirty", "bright", "fast", "loud"]
_FEELINGS = ["happy", "sad", "scared", "excited", "angry", "proud", "tired", "surprised", "curious",
             "brave", "lonely", "calm"]
_VERBS = ["played with", "looked at", "found", "saw", "wanted", "liked", "held", "lost", "shared",
          "fixed", "painted", "hid", "threw", "carried", "cleaned"]
_QUOTES = ["Let's play!", "Can you help me?", "I am sorry.", "Thank you!", "Look at this!",
           "I want to go home.", "That is fun!", "Be careful!", "I love you.", "Where is it?",
           "Come with me!", "What is that?"]
_RELATIVES = ["mom", "dad", "friend", "sister", "brother", "grandma", "teacher"]


def _zipf_weights(n: int, s: float) -> list[float]:
    return [1.0 / (r + 1) ** s for r in range(n)]


class _Picker:
    """Zipf-weighted choice from a fixed list: word r of the list has weight 1/(r+1)^s."""

    def __init__(self, words: Sequence[str], s: float = 1.1):
        self.words = list(words)
        self.weights = _zipf_weights(len(self.words), s)

    def __call__(self, rng: random.Random) -> str:
        return rng.choices(self.words, weights=self.weights, k=1)[0]


_P = {
    "girl": _Picker(_GIRLS), "boy": _Picker(_BOYS), "animal": _Picker(_ANIMALS),
    "object": _Picker(_OBJECTS), "place": _Picker(_PLACES), "adj": _Picker(_ADJS),
    "feeling": _Picker(_FEELINGS), "verb": _Picker(_VERBS), "quote": _Picker(_QUOTES),
    "relative": _Picker(_RELATIVES),
}


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _story(rng: random.Random) -> str:
    """One story: an opening shared across stories, 3-7 middle sentences about the same entities, an ending."""
    p = _P
    girl = rng.random() < 0.55
    hero = p["girl"](rng) if girl else p["boy"](rng)
    pro, pos = ("she", "her") if girl else ("he", "his")
    friend = p["boy"](rng) if girl else p["girl"](rng)
    animal, obj, place = p["animal"](rng), p["object"](rng), p["place"](rng)
    adj, obj_adj, rel = p["adj"](rng), p["adj"](rng), p["relative"](rng)
    kind = "girl" if girl else "boy"
    # shared openings, Zipf-weighted: most stories start the same way
    openings = [
        f"Once upon a time, there was a little {kind} named {hero}.",
        f"One day, a little {kind} named {hero} went to the {place}.",
        f"Once upon a time, in {_a(adj)} {place}, there lived {_a(animal)} named {hero}.",
        f"There was once {_a(adj)} {kind} named {hero} who loved {pos} {obj}.",
        f"Once upon a time, {hero} had {_a(obj_adj)} {obj}.",
    ]
    sentences = [openings[rng.choices(range(len(openings)), weights=_zipf_weights(len(openings), 1.0))[0]]]
    middles = [
        lambda: f"{hero} {p['verb'](rng)} {_a(obj_adj)} {obj}.",
        lambda: f"{pro.capitalize()} wanted to play with the {obj} in the {place}.",
        lambda: f"{hero} and {friend} went to the {place}.",
        lambda: f"The {animal} said, \"{p['quote'](rng)}\"",
        lambda: f"{hero} felt {p['feeling'](rng)}.",
        lambda: f"{pro.capitalize()} said to {pos} {rel}, \"{p['quote'](rng)}\"",
        lambda: f"{friend} {p['verb'](rng)} the {obj}.",
        lambda: f"Then {pro} saw {_a(p['adj'](rng))} {p['animal'](rng)} near the {place}.",
        lambda: f"The {obj} was very {p['adj'](rng)}.",
        lambda: f"{pos.capitalize()} {rel} was {p['feeling'](rng)}.",
    ]
    mw = _zipf_weights(len(middles), 0.8)
    for _ in range(rng.randint(3, 7)):
        sentences.append(rng.choices(middles, weights=mw, k=1)[0]())
    endings = [
        f"From that day on, {hero} and {friend} were best friends.",
        f"{hero} was very {p['feeling'](rng)} and went home.",
        "And they all lived happily ever after.",
        f"{hero} never lost the {obj} again.",
        f"The {animal} and {hero} played in the {place} every day.",
    ]
    sentences.append(endings[rng.choices(range(len(endings)), weights=_zipf_weights(len(endings), 1.0))[0]])
    # paragraph breaks like TinyStories (one story = a few lines)
    cut = rng.randint(2, len(sentences) - 1)
    return " ".join(sentences[:cut]) + "\n" + " ".join(sentences[cut:])


def generate_stories(num_stories: int, seed: int = 0) -> list[str]:
    """``num_stories`` procedural stories; story ``i`` depends only on ``(seed, i)``.

    About 45 words per story from a vocabulary of ~250 words chosen with Zipf-like weights.
    Use different seeds for training and validation text.
    """
    if not isinstance(num_stories, int) or num_stories < 0:
        raise ValueError(f"num_stories must be a non-negative int, got {num_stories!r}")
    return [_story(random.Random(f"hf_collapse-stories-{seed}-{i}")) for i in range(num_stories)]


# ---------------------------------------------------------------------------------------------
# tokenizers


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2):
    """A byte-level BPE tokenizer trained on ``texts`` (``tokenizers``), as a ``PreTrainedTokenizerFast``.

    Like GPT-2's: byte-level pre-tokenization (no unknown tokens), ``<|endoftext|>`` as the
    special token serving as bos/eos/pad. ``vocab_size`` includes the 256 byte tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size must exceed the 256 byte tokens plus {EOS}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS,
                                   unk_token=EOS)


def load_tokenizer(name_or_path: str):
    """``AutoTokenizer.from_pretrained`` with a pad token (the eos token) set, as packing needs none but collators do."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# ---------------------------------------------------------------------------------------------
# packing


def pack_token_ids(sequences: Iterable[Sequence[int]], block_size: int, eos_id: Optional[int],
                   max_blocks: Optional[int] = None) -> torch.Tensor:
    """GPT-style packing: concatenate ``seq + [eos]`` for every sequence, cut into rows of ``block_size``.

    Returns a LongTensor ``(N, block_size)``; the ragged tail (< block_size tokens) is dropped.
    ``eos_id=None`` concatenates without separators. Stops after ``max_blocks`` rows if given.
    """
    if not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an int >= 2, got {block_size!r}")
    stream: list[int] = []
    limit = None if max_blocks is None else max_blocks * block_size
    for seq in sequences:
        stream.extend(int(t) for t in seq)
        if eos_id is not None:
            stream.append(int(eos_id))
        if limit is not None and len(stream) >= limit:
            break
    n = len(stream) // block_size
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n == 0:
        raise ValueError(f"the texts hold {len(stream)} tokens, fewer than one block of {block_size}")
    return torch.tensor(stream[: n * block_size], dtype=torch.long).view(n, block_size)  # (N, T)


def pack_texts(texts: Sequence[str], tokenizer, block_size: int, max_blocks: Optional[int] = None,
               batch_size: int = 1000) -> torch.Tensor:
    """Tokenize ``texts`` (no special tokens added) and pack them with the tokenizer's eos token: ``(N, T)``."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token to separate packed texts")

    def batches():
        for i in range(0, len(texts), batch_size):
            for ids in tokenizer(list(texts[i:i + batch_size]), add_special_tokens=False)["input_ids"]:
                yield ids

    return pack_token_ids(batches(), block_size, tokenizer.eos_token_id, max_blocks=max_blocks)


class PackedDataset(torch.utils.data.Dataset):
    """Rows of a packed ``(N, T)`` tensor as ``{"input_ids", "labels"}`` examples for ``Trainer``."""

    def __init__(self, blocks: torch.Tensor):
        if not isinstance(blocks, torch.Tensor) or blocks.dim() != 2:
            raise TypeError("PackedDataset expects a (N, T) LongTensor from pack_texts / pack_token_ids")
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i):
        row = self.blocks[i]
        return {"input_ids": row, "labels": row.clone()}


# ---------------------------------------------------------------------------------------------
# loaders


def read_stories(path: str | os.PathLike, separator: str = EOS, max_stories: Optional[int] = None) -> list[str]:
    """Stories from a TinyStories-format text file: stories separated by lines holding ``separator``.

    A file without any separator line (e.g. the TinyStories validation text) is returned as one
    text, so packing adds no end-of-text tokens inside it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no text file at {path!r}")
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    stories, current = [], []
    for line in raw.splitlines():
        if line.strip() == separator:
            stories.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    stories.append("\n".join(current).strip())
    stories = [s for s in stories if s]
    if max_stories is not None:
        stories = stories[:max_stories]
    if not stories:
        raise ValueError(f"{path!r} holds no text")
    return stories


def load_hub_stories(dataset_name: str = DEFAULT_HUB_DATASET, split: str = "train", text_column: str = "text",
                     max_stories: Optional[int] = None, **kwargs) -> list[str]:
    """Texts of a Hugging Face Hub dataset (default TinyStories) via ``datasets.load_dataset``.

    With ``max_stories`` the split is streamed and only that many stories are read.
    """
    import datasets

    if max_stories is not None:
        ds = datasets.load_dataset(dataset_name, split=split, streaming=True, **kwargs)
        out = []
        for ex in ds:
            if len(out) >= max_stories:
                break
            out.append(ex[text_column])
        return out
    ds = datasets.load_dataset(dataset_name, split=split, **kwargs)
    if text_column not in ds.column_names:
        raise ValueError(f"dataset {dataset_name!r} has no column {text_column!r} (columns: {ds.column_names})")
    return list(ds[text_column])
