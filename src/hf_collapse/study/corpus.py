"""The built-in story corpus and a tokenizer trained on it (the demo and tests; no network needed).

``generate_stories`` stands in for TinyStories where the real text is not at hand. It is procedural
but built to have the properties that matter for collapse: a Zipf-like vocabulary (so token classes
are heavily imbalanced), story openings shared by most stories (so many contexts are ambiguous:
after "named" any name can follow) and entities that recur within a story (so a model with attention
can learn more than bigram statistics). It is deterministic per seed: story ``i`` of seed ``s``
depends only on ``(s, i)``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from ..core.errors import UserValueError
from ..integrations.data import EOS

# ---------------------------------------------------------------------------------------------
# built-in procedural stories

_GIRLS = [
    "Lily",
    "Mia",
    "Sue",
    "Anna",
    "Lucy",
    "Zoe",
    "Emma",
    "Kate",
    "Amy",
    "Ella",
    "Rose",
    "Jane",
    "Ruby",
    "Daisy",
    "Molly",
    "Sara",
]
_BOYS = [
    "Tom",
    "Ben",
    "Tim",
    "Max",
    "Sam",
    "Jack",
    "Leo",
    "Bob",
    "Joe",
    "Finn",
    "Jake",
    "Dan",
    "Ned",
    "Pip",
    "Ray",
    "Zack",
]
_ANIMALS = [
    "dog",
    "cat",
    "bird",
    "bunny",
    "fish",
    "frog",
    "bear",
    "duck",
    "mouse",
    "lion",
    "owl",
    "fox",
    "pig",
    "cow",
    "horse",
    "turtle",
    "bee",
    "puppy",
    "kitten",
    "monkey",
]
_OBJECTS = [
    "ball",
    "toy",
    "kite",
    "box",
    "hat",
    "car",
    "book",
    "cake",
    "flower",
    "stone",
    "boat",
    "drum",
    "doll",
    "cup",
    "shell",
    "key",
    "map",
    "bell",
    "truck",
    "apple",
    "balloon",
    "crayon",
]
_PLACES = [
    "park",
    "garden",
    "forest",
    "house",
    "school",
    "beach",
    "river",
    "farm",
    "town",
    "hill",
    "lake",
    "yard",
    "shop",
    "cave",
]
_ADJS = [
    "big",
    "little",
    "red",
    "shiny",
    "old",
    "new",
    "blue",
    "soft",
    "tiny",
    "green",
    "pretty",
    "funny",
    "yellow",
    "round",
    "dirty",
    "bright",
    "fast",
    "loud",
]
_FEELINGS = [
    "happy",
    "sad",
    "scared",
    "excited",
    "angry",
    "proud",
    "tired",
    "surprised",
    "curious",
    "brave",
    "lonely",
    "calm",
]
_VERBS = [
    "played with",
    "looked at",
    "found",
    "saw",
    "wanted",
    "liked",
    "held",
    "lost",
    "shared",
    "fixed",
    "painted",
    "hid",
    "threw",
    "carried",
    "cleaned",
]
_QUOTES = [
    "Let's play!",
    "Can you help me?",
    "I am sorry.",
    "Thank you!",
    "Look at this!",
    "I want to go home.",
    "That is fun!",
    "Be careful!",
    "I love you.",
    "Where is it?",
    "Come with me!",
    "What is that?",
]
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
    "girl": _Picker(_GIRLS),
    "boy": _Picker(_BOYS),
    "animal": _Picker(_ANIMALS),
    "object": _Picker(_OBJECTS),
    "place": _Picker(_PLACES),
    "adj": _Picker(_ADJS),
    "feeling": _Picker(_FEELINGS),
    "verb": _Picker(_VERBS),
    "quote": _Picker(_QUOTES),
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
        lambda: f'The {animal} said, "{p["quote"](rng)}"',
        lambda: f"{hero} felt {p['feeling'](rng)}.",
        lambda: f'{pro.capitalize()} said to {pos} {rel}, "{p["quote"](rng)}"',
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
        raise UserValueError(f"num_stories must be a non-negative int, got {num_stories!r}")
    return [_story(random.Random(f"hf_collapse-stories-{seed}-{i}")) for i in range(num_stories)]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2):
    """A byte-level BPE tokenizer trained on ``texts`` (``tokenizers``), as a ``PreTrainedTokenizerFast``.

    Like GPT-2's: byte-level pre-tokenization (no unknown tokens), ``<|endoftext|>`` as the
    special token serving as bos/eos/pad. ``vocab_size`` includes the 256 byte tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257 + 1:
        raise UserValueError(f"vocab_size must exceed the 256 byte tokens plus {EOS}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)
