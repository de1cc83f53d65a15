"""COCO run-length encoding of binary masks, without pycocotools.

Format (the COCO API's compressed RLE): ``{"size": [h, w], "counts": str}``; runs are counted in column-major
(Fortran) order starting with a run of zeros, and the counts are packed as LEB128-like 5-bit groups offset by 48,
each count after the second stored as the difference to the count two before.
"""

from __future__ import annotations

import numpy as np


def _runs(mask: np.ndarray) -> list[int]:
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0] + runs
    return runs


def encode_rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of an HxW boolean mask."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {mask.shape}")
    counts = _runs(mask)
    chars = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": "".join(chars)}


def decode_rle(rle: dict) -> np.ndarray:
    """The HxW boolean mask of a compressed COCO RLE."""
    h, w = rle["size"]
    counts: list[int] = []
    s = rle["counts"]
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    flat = np.zeros(h * w, dtype=bool)
    pos, value = 0, False
    for run in counts:
        flat[pos : pos + run] = value
        pos += run
        value = not value
    return flat.reshape((w, h)).T.copy()
