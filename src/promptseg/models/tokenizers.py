"""CLIP tokenizers for the models promptseg makes itself: over a small word list, or CLIP's real vocabulary.

`build_clip_tokenizer()` is Stable Diffusion's tokenizer (CLIP's byte-pair vocabulary of 49,408 tokens, built from
the `bpe_simple_vocab_16e6.txt.gz` that ships inside the `open-clip-torch` wheel, which `make` installs without its
dependencies: it is read as a file, never imported), for models and tests that must tokenise as SD does.

The tokenizer is a real `transformers.CLIPTokenizer` (byte-pair encoding with CLIP's ``</w>`` end-of-word
marker), so the code that reads it is the code that reads Stable Diffusion's tokenizer. The merges are learnt by
a small deterministic BPE trainer on the word list (most frequent pair first, ties broken alphabetically) until
every listed word is one token; any other word falls back to sub-word pieces or letters, which is exactly the
multi-token case real class names hit (e.g. "grassland"). The same word list always gives the same ids, so a
resumed training run rebuilds the tokenizer it started with.
"""

from __future__ import annotations

import gzip
import string
from collections import Counter
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

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


CLIP_MERGES = 49152 - 256 - 2
"""How many merges of the vocabulary file CLIP uses (open_clip's and OpenAI's tokenizers)."""


def clip_bpe_path() -> Path:
    """The `bpe_simple_vocab_16e6.txt.gz` inside the installed `open-clip-torch` (found without importing it).

    Raises:
        FileNotFoundError: open-clip-torch is not installed (the message says how to install it).
    """
    spec = find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "bpe_simple_vocab_16e6.txt.gz"
        if path.is_file():
            return path
    raise FileNotFoundError(
        "CLIP's BPE vocabulary ships inside the open-clip-torch wheel, which is not installed: "
        "pip install --no-deps open-clip-torch (its dependencies are not needed: only the vocabulary file is read)"
    )


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable characters (CLIP's byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + list(
        range(ord("\u00ae"), ord("\u00ff") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def build_clip_tokenizer(path: str | Path | None = None, model_max_length: int = 77, pad_token: str = EOS) -> CLIPTokenizer:
    """CLIP's (and Stable Diffusion's) tokenizer: 49,408 tokens, the vocabulary's first 48,894 merges.

    Args:
        path (`str`, *optional*): the `bpe_simple_vocab_16e6.txt.gz` file; defaults to the one in open-clip-torch.
        model_max_length (`int`, defaults to 77): the padded length, start and end tokens included.
        pad_token (`str`, defaults to "<|endoftext|>"): SD 1.x pads with the end token, SD 2.x with "!".
    """
    lines = gzip.open(path or clip_bpe_path(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:CLIP_MERGES + 1]]
    alphabet = list(bytes_to_unicode().values())
    symbols = alphabet + [ch + "</w>" for ch in alphabet] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length, pad_token=pad_token)
