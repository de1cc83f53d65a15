"""Several images through one method: one denoiser forward for a batch where the method allows it.

    if batches(method):
        prepared = method.prepare_many(images)                       # the VAE sees the images in chunks
        results = method.segment_many(prepared, labels, captions)    # one SegmentationResult per image

A method that batches defines `prepare_many(images)` and `segment_many(prepared, labels, captions)` and says which
of its settings allow it (`batches`, a property). The baseline, FastSeg and ConceptAttention do: their single
recording pass takes one latent per image (and per view), each image conditioned on its own prompt, so a filter
that keeps different labels per image costs nothing extra. InvSeg and Segment Anyword optimise embeddings for one
image, and DPSeg's decoder reads one image's cost volume: they run one image at a time (`batches` absent), as
does any setting that needs several passes per image (labels that do not fit one prompt, a captioner, GoCA).
Results equal one image at a time to float rounding (`tests/test_batching.py`).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from promptseg.text import label_scores


def check_batch_size(batch_size: int) -> None:
    """Raise a ValueError for a batch size below 1 (before any model loads)."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def batches(method) -> bool:
    """Whether `method` runs several images in one forward with its settings."""
    return bool(getattr(method, "batches", False))


def batch_warning(name: str, method) -> str | None:
    """What to tell a user who asked for a batch that `method` (registered as `name`) runs image by image; None
    when it batches."""
    if batches(method):
        return None
    reason = getattr(method, "one_at_a_time", "its settings need several passes per image")
    return f"{name} runs one image at a time ({reason}): a batch size changes nothing for it"


def prepare_noised(backbone, images, timestep: int, seed: int) -> list:
    """`prepare_batch` of the images (the VAE seeing them in chunks), each then noised to `timestep` by its own
    seeded draw (`extra["noisy"]`), as the one-pass methods' `prepare` does for one image; each image's "prepare"
    time is its share."""
    from promptseg.diffusion.encode import prepare_batch
    from promptseg.diffusion.noise import noised_latents

    start = time.perf_counter()
    prepared = prepare_batch(backbone, images)
    for item in prepared:
        item.extra["noisy"], _ = noised_latents(backbone, item.latents, timestep, seed)
    for item in prepared:
        item.timings["prepare"] = (time.perf_counter() - start) / len(prepared)
    return prepared


def shared_rows(method, prepared: list, labels: list, captions: list, fits) -> tuple[list, list[int]]:
    """(results, rows): the images for which `fits(i)` is False (several passes of their own) already segmented
    alone by `method.segment`, and the rows of the others, which share one forward (none when fewer than two)."""
    rows = [i for i in range(len(prepared)) if fits(i)]
    rows = rows if len(rows) > 1 else []
    out = [None if i in rows else method.segment(prepared[i], labels[i], caption=captions[i])
           for i in range(len(prepared))]
    return out, rows


def padded_label_scores(cross: torch.Tensor, positions: list) -> torch.Tensor:
    """(B, N, T) token maps of B images, each with its own prompt's label positions -> (B, N, K) label maps, K the
    most labels of any image, the others' missing labels zero-filled (every reader treats label columns apart, so
    the padding changes no other column)."""
    parts = [label_scores(cross[i:i + 1], spans) for i, spans in enumerate(positions)]
    width = max(part.shape[-1] for part in parts)
    return torch.cat([F.pad(part, (0, width - part.shape[-1])) for part in parts])


def timing_share(prepared, seconds: float, count: int) -> dict:
    """An image's timings: its preparation's and its share of a batch's `seconds` as "segment"."""
    return {**prepared.timings, "segment": seconds / count}
