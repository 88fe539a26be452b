"""Trains the tiny GPT-2 style byte-level BPE tokenizer the data tests use
(tests/fixtures/data/tokenizer.json). Same pipeline as GPT-2/Phi-2's tokenizer.json:
ByteLevel pre-tokenizer (no prefix space), BPE, ByteLevel decoder, `<|endoftext|>` as the
special token with id 0 here (50256 in Phi-2; the tests never hard-code it).

Run: /work/pyref/bin/python scripts/make_data_tokenizer.py
"""
import itertools
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

colors = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray"]
kinds = ["circle", "square", "triangle", "diamond", "shape", "object"]
places = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]
corpus = []
for c, k, p in itertools.product(colors, kinds, places):
    corpus.append(f"USER: Where is the {c} {k}? ASSISTANT: {p}")
    corpus.append(f"A {c} {k} in the {p} on a white background.")
    corpus.append(f"What color is the {k}? ASSISTANT: {c}")
corpus += [
    "A man riding a wave on top of a surfboard.",
    "A kitchen with wooden cabinets and a white stove.",
    "Two dogs playing with a frisbee in the park.",
    "What are the colors of the bus in the image?",
    "The bus in the image is white and red.",
    "How many shapes are there in the image? 1 2 3 4 5 6 7 8 9 0",
    "Is there a cat in the picture? yes no",
]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.post_processor = processors.ByteLevel(trim_offsets=False)
trainer = trainers.BpeTrainer(
    vocab_size=600,
    special_tokens=["<|endoftext|>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
)
tok.train_from_iterator(corpus * 3, trainer)
out = Path(__file__).resolve().parent.parent / "tests/fixtures/data/tokenizer.json"
tok.save(str(out))
print(out, tok.get_vocab_size())
