"""Connected regions of masks and label maps, shared by the referring prompts, the refiners and the labelling tool.

    labels, count = connected_components(mask)          # HxW bool -> HxW int32 (0 outside), number of regions
    for box, region in regions(label_map == k): ...      # each region's (x0, y0, x1, y1) box and HxW bool mask
"""

from __future__ import annotations

import numpy as np


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) column ranges of the True runs of a 1-D bool array."""
    padded = np.concatenate([[False], row, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a 2-D bool array: (labels int32 with 0 = outside, count).

    Components are numbered in raster order of their first pixel. Works on runs of each row (union-find over runs
    that overlap the previous row's), so the Python work grows with the number of runs, not of pixels.
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"connected_components takes a 2-D mask, got shape {mask.shape}")
    parent: list[int] = []

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    rows: list[list[tuple[int, int, int]]] = []  # per row: (start, end, run id)
    previous: list[tuple[int, int, int]] = []
    for y in range(mask.shape[0]):
        current = []
        j = 0
        for start, end in _runs(mask[y]):
            run = len(parent)
            parent.append(run)
            while j < len(previous) and previous[j][1] <= start:
                j += 1
            k = j
            while k < len(previous) and previous[k][0] < end:  # overlapping columns: 4-connected
                a, b = find(run), find(previous[k][2])
                if a != b:
                    parent[max(a, b)] = min(a, b)
                k += 1
            current.append((start, end, run))
        rows.append(current)
        previous = current
    labels = np.zeros(mask.shape, np.int32)
    numbers: dict[int, int] = {}
    for y, current in enumerate(rows):
        for start, end, run in current:
            root = find(run)
            if root not in numbers:
                numbers[root] = len(numbers) + 1
            labels[y, start:end] = numbers[root]
    return labels, len(numbers)


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a non-empty HxW bool mask, pixel edges (x1, y1 exclusive)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if not len(ys):
        raise ValueError("bounding_box of an empty mask")
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def regions(mask: np.ndarray, min_area: int = 1) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """The connected regions of `mask` with at least `min_area` pixels, largest first: (box, HxW bool mask)."""
    labels, count = connected_components(mask)
    if not count:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    out = []
    for index in np.argsort(-areas, kind="stable"):
        if areas[index] >= min_area:
            region = labels == index + 1
            out.append((bounding_box(region), region))
    return out
