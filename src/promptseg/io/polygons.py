"""Masks as polygons, exactly: the pixel-edge outline of each part, its holes joined in, for COCO polygons and YOLO.

    for ring in mask_polygons(mask):        # one (K, 2) float array of (x, y) per connected part, holes included
        ...
    part_outlines(region)                   # (outer ring, [hole rings]) of one 4-connected part

Two conventions, one per reader. COCO's: continuous coordinates, pixel (x, y) covers [x, x+1) x [y, y+1), a vertex on
a pixel corner, so the polygon encloses exactly the mask's pixels (`pycocotools` rasterises it back to them). The
YOLO tools' (`centres=True`): the ring through the boundary pixels' centres in pixel indices, as their writers trace
it (`cv2.findContours`) and their readers fill it (`cv2.fillPoly`, boundary included), again exactly the pixels. Outlines follow pixel edges with
only their corners kept (straight runs are one segment), so nothing is smoothed away and a one-pixel-wide part
keeps its area.

Parts are 4-connected, as `regions` counts them (two pixels touching at a corner are two parts). A hole is joined
to its part's outer ring by a zero-width cut (out along one segment, back along the same one), which is how
Ultralytics writes a segment with holes in one YOLO line (`merge_multi_segment`) and how a COCO polygon keeps a
hole: any even-odd or non-zero fill of the joined ring leaves the hole empty.
"""

from __future__ import annotations

import numpy as np

from promptseg.io.regions import bounding_box, connected_components

# the four edge kinds of an inside pixel whose neighbour across the edge is outside: (start, end) corners relative
# to the pixel's top-left corner. Walking them, the inside is on the right on screen (x right, y down): outer rings
# run clockwise on screen, holes anticlockwise.
_EDGES = {
    "top": ((0, 0), (1, 0)),
    "right": ((1, 0), (1, 1)),
    "bottom": ((1, 1), (0, 1)),
    "left": ((0, 1), (0, 0)),
}
_NEIGHBOUR = {"top": (-1, 0), "right": (0, 1), "bottom": (1, 0), "left": (0, -1)}  # (dy, dx) across the edge


def _boundary_edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary edges of a bool mask: (starts, ends), each (E, 2) int (x, y) corners."""
    padded = np.pad(mask, 1)
    starts, ends = [], []
    for kind, ((sx, sy), (ex, ey)) in _EDGES.items():
        dy, dx = _NEIGHBOUR[kind]
        outside = ~padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx]
        ys, xs = np.nonzero(mask & outside)
        starts.append(np.stack([xs + sx, ys + sy], 1))
        ends.append(np.stack([xs + ex, ys + ey], 1))
    return np.concatenate(starts), np.concatenate(ends)


def _rings(mask: np.ndarray) -> list[np.ndarray]:
    """The closed boundary loops of a bool mask, each an (K, 2) int array of its corner vertices."""
    starts, ends = _boundary_edges(mask)
    width = mask.shape[1] + 1
    key = starts[:, 1] * width + starts[:, 0]
    outgoing: dict[int, list[int]] = {}
    for index, k in enumerate(key.tolist()):
        outgoing.setdefault(k, []).append(index)
    used = np.zeros(len(starts), bool)
    direction = ends - starts
    rings = []
    for first in range(len(starts)):
        if used[first]:
            continue
        loop, edge = [], first
        while not used[edge]:
            used[edge] = True
            loop.append(edge)
            end = ends[edge]
            options = [e for e in outgoing[int(end[1] * width + end[0])] if not used[e]]
            if not options:
                break
            if len(options) > 1:  # two parts meet at a corner: turn right, towards the inside, so 4-connected
                dx, dy = direction[edge]  # parts stay apart (on screen, right of (dx, dy) is (-dy, dx))
                options.sort(key=lambda e: 0 if tuple(direction[e]) == (-dy, dx) else 1)
            edge = options[0]
        corners = starts[loop]
        turn = np.any(direction[loop] != np.roll(direction[loop], 1, axis=0), axis=1)  # keep where direction changes
        rings.append(corners[turn])
    return rings


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area in screen coordinates: positive for clockwise on screen (outer rings), negative for holes."""
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def part_outlines(part: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(outer ring, hole rings) of a non-empty, 4-connected HxW bool mask, as float (x, y) vertex arrays."""
    part = np.asarray(part, bool)
    if not part.any():
        raise ValueError("part_outlines of an empty mask")
    x0, y0, x1, y1 = bounding_box(part)
    rings = [r + (x0, y0) for r in _rings(part[y0:y1, x0:x1])]
    outer = [r for r in rings if _signed_area(r) > 0]
    if len(outer) != 1:
        raise ValueError(f"part_outlines takes one 4-connected part, found {len(outer)}; split it with regions()")
    holes = [r.astype(np.float64) for r in rings if _signed_area(r) < 0]
    return outer[0].astype(np.float64), holes


def through_centres(ring: np.ndarray) -> np.ndarray:
    """A pixel-edge ring moved half a pixel inwards, through the centres of the part's boundary pixels (for a hole,
    of the pixels around it), in pixel-index coordinates (pixel (x, y) at (x, y)): the ring `cv2.findContours`
    traces, and the one readers that fill with `cv2.fillPoly` (boundary included: Ultralytics' `polygon2mask`,
    supervision's `polygon_to_mask`) turn back into exactly the part's pixels."""
    incoming = np.sign(ring - np.roll(ring, 1, axis=0))
    outgoing = np.roll(incoming, -1, axis=0)
    inward = lambda d: np.stack([-d[:, 1], d[:, 0]], 1)  # noqa: E731 - right of the walk on screen = the inside
    return ring + 0.5 * (inward(incoming) + inward(outgoing)) - 0.5


def join_rings(first: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """One ring: `first` with each of `others` (its holes, or other parts) spliced in by a zero-width cut from the
    other's top-left vertex to the nearest vertex of `first` (Ultralytics' `merge_multi_segment` joins a COCO
    annotation's parts into one YOLO line the same way). Linear in `first`'s length per ring joined; a cut may cross
    another ring, which an even-odd fill ignores (the cut is walked both ways)."""
    if not others:
        return first
    picks = []
    for other in others:
        j = int(np.lexsort((other[:, 0], other[:, 1]))[0])
        i = int(np.argmin(((first - other[j]) ** 2).sum(axis=1)))
        picks.append((i, j, other))
    pieces, previous = [], 0
    for i, j, other in sorted(picks, key=lambda pick: pick[0]):
        pieces += [first[previous:i + 1], np.roll(other, -j, axis=0), other[j:j + 1]]
        previous = i
    pieces.append(first[previous:])
    return np.concatenate(pieces)


def joined_polygon(mask: np.ndarray, centres: bool = False) -> np.ndarray:
    """Every part of a non-empty mask, holes included, as one ring (`join_rings`): a YOLO line's or a Label Studio
    polygon's."""
    rings = mask_polygons(mask, centres=centres)
    if not rings:
        raise ValueError("joined_polygon of an empty mask")
    return join_rings(rings[0], rings[1:])


def mask_polygons(mask: np.ndarray, min_area: int = 1, centres: bool = False) -> list[np.ndarray]:
    """One ring per 4-connected part of `mask` with at least `min_area` pixels (largest first), its holes joined in:
    a list of (K, 2) float arrays of (x, y) vertices in pixel-corner coordinates (COCO's polygons); `centres`: the
    rings `through_centres`, in pixel indices (the YOLO tools' polygons)."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"mask_polygons takes a 2-D mask, got shape {mask.shape}")
    labels, count = connected_components(mask)
    if not count:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs] - 1
    low = np.full((count, 2), np.iinfo(np.int64).max)
    high = np.full((count, 2), -1)
    np.minimum.at(low, ids, np.stack([ys, xs], 1))
    np.maximum.at(high, ids, np.stack([ys, xs], 1))
    out = []
    for index in np.argsort(-areas, kind="stable"):
        if areas[index] >= min_area:
            (y0, x0), (y1, x1) = low[index], high[index] + 1  # each part from its own box, not the whole frame
            outer, holes = part_outlines(labels[y0:y1, x0:x1] == index + 1)
            outer, holes = outer + (x0, y0), [h + (x0, y0) for h in holes]
            if centres:
                outer, holes = through_centres(outer), [through_centres(h) for h in holes]
            out.append(join_rings(outer, holes))
    return out
