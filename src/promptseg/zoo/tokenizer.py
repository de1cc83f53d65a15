"""Build a CLIP tokenizer over a small word list, for the models promptseg makes itself.

The tokenizer is a real `transformers.CLIPTokenizer` (byte-pair encoding with CLIP's ``</w>`` end-of-word
marker), so the code that reads it is the code that reads Stable Diffusion's tokenizer. The merges are learnt by
a small deterministic BPE trainer on the word list (most frequent pair first, ties broken alphabetically) until
every listed word is one token; any other word falls back to sub-word pieces or letters, which is exactly the
multi-token case real class names hit (e.g. "grassland"). The same word list always gives the same ids, so a
resumed training run rebuilds the tokenizer it started with.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Sequence

from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def learn_merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """BPE merges, in rank order, that turn every word of `words` into one symbol ending in ``</w>``."""
    segments = [list(w[:-1]) + [w[-1] + "</w>"] for w in sorted(set(words))]
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for seg in segments for pair in zip(seg, seg[1:]))
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        joined = best[0] + best[1]
        for i, seg in enumerate(segments):
            out, k = [], 0
            while k < len(seg):
                if k + 1 < len(seg) and (seg[k], seg[k + 1]) == best:
                    out.append(joined)
                    k += 2
                else:
                    out.append(seg[k])
                    k += 1
            segments[i] = out


def build_word_tokenizer(words: Sequence[str], model_max_length: int) -> CLIPTokenizer:
    """A `CLIPTokenizer` in which each of `words` (lower-case letters only) is exactly one token.

    Args:
        words (`Sequence[str]`): the vocabulary; each must match ``[a-z]+``.
        model_max_length (`int`): the padded sequence length, start and end tokens included.
    """
    bad = [w for w in words if not w or any(ch not in string.ascii_lowercase for ch in w)]
    if bad:
        raise ValueError(f"vocabulary words must be lower-case letters only, got {bad}")
    merges = learn_merges(words)
    symbols = list(string.ascii_lowercase) + [ch + "</w>" for ch in string.ascii_lowercase]
    symbols += [a + b for a, b in merges]
    vocab = {symbol: i for i, symbol in enumerate(dict.fromkeys(symbols))}
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    split = [w for w in words if len(tokenizer(w).input_ids) != 3]
    if split:
        raise RuntimeError(f"words not kept as single tokens: {split}")
    return tokenizer
