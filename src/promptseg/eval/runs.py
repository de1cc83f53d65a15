"""Resumable, sharded runs over many images: the pieces the evaluation runners and the labelling tool share.

Each finished item is written atomically as its own file, so a rerun after a kill skips what is done; a folder's
`run.json` records the settings, and a rerun with others is refused. Under `accelerate launch` (or `torchrun`) each
process takes a contiguous shard of the items and the main process writes what sums or merges them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class Shard:
    """This process's part of the work; a single process when not launched distributed."""

    def __init__(self):
        self.state = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch
            from accelerate import PartialState

            # gloo on machines without CUDA (CPU runs and tests), the launcher's default backend otherwise
            self.state = PartialState(cpu=not torch.cuda.is_available())
        self.rank = self.state.process_index if self.state else 0
        self.world = self.state.num_processes if self.state else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def indices(self, n: int) -> list[int]:
        """Contiguous, uneven shards: process r takes images [start_r, end_r); every image exactly once."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return list(range(start, start + base + (1 if self.rank < extra else 0)))

    def sum(self, array: np.ndarray) -> np.ndarray:
        if self.state is None:
            return array
        import torch
        import torch.distributed as dist

        tensor = torch.from_numpy(array.astype(np.float64)).to(self.state.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().numpy()

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def check_run_file(out: Path, signature: dict) -> None:
    """Record `signature` in `out/run.json`, or check it against the one there.

    Raises:
        ValueError: `out` holds a run with other settings (the message names them).
    """
    path = out / "run.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != signature:
            changed = sorted(k for k in set(previous) | set(signature) if previous.get(k) != signature.get(k))
            raise ValueError(
                f"{out} holds a run with other {changed}; resume with the same settings or choose a new --out"
            )
    else:
        atomic_write(path, json.dumps(signature, indent=1, sort_keys=True))
