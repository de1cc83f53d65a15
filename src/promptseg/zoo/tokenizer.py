"""Build a CLIP tokenizer over a small word list, for the models promptseg makes itself.

The tokenizer is a real `transformers.CLIPTokenizer` (byte-pair encoding with CLIP's ``</w>`` end-of-word
marker), so the code that reads it is the code that reads Stable Diffusion's tokenizer. The merges are learnt
with the `tokenizers` BPE trainer on the word list until every listed word is one token; any other word falls
back to sub-word pieces, which is exactly the multi-token case real class names hit (e.g. "grassland").
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence

from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def build_word_tokenizer(words: Sequence[str], model_max_length: int) -> CLIPTokenizer:
    """A `CLIPTokenizer` in which each of `words` (lower-case letters only) is exactly one token.

    Args:
        words (`Sequence[str]`): the vocabulary; each must match ``[a-z]+``.
        model_max_length (`int`): the padded sequence length, start and end tokens included.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    bad = [w for w in words if not w or any(ch not in string.ascii_lowercase for ch in w)]
    if bad:
        raise ValueError(f"vocabulary words must be lower-case letters only, got {bad}")
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,
        special_tokens=[],
        end_of_word_suffix="</w>",
        initial_alphabet=list(string.ascii_lowercase),
        show_progress=False,
    )
    bpe.train_from_iterator([" ".join(sorted(set(words)))], trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    vocab = dict(state["vocab"])
    # Single letters with the end-of-word marker, so any unknown word can be spelled.
    for ch in string.ascii_lowercase:
        vocab.setdefault(ch + "</w>", len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    split = [w for w in words if len(tokenizer(w).input_ids) != 3]
    if split:
        raise RuntimeError(f"words not kept as single tokens: {split}")
    return tokenizer
