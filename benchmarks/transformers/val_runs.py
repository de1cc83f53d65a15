"""What the val sweeps share: one method's mIoU on a dataset's *val* split, evaluated in a scratch folder."""

from __future__ import annotations

import shutil
import tempfile

from promptseg.eval.runner import EvalRun, evaluate


def val_miou(backbone, model: str, method: str, n: int, settings: dict, dataset: str = "shapes",
             names: str = "oracle", label_filter: str | None = None) -> float:
    """mIoU of `method` with `settings` on the first `n` val images of `dataset` (`names`: "oracle" or "all";
    `label_filter`: the class filter, None for the default), no refiner, on the loaded `backbone`."""
    work = tempfile.mkdtemp(prefix=f"val_{method}_")
    try:
        report = evaluate(EvalRun(dataset=dataset, split="val", method=method, model=model, out=work, limit=n,
                                  device="cpu", refine="none", filter=label_filter, names=names, settings=settings),
                          progress=False, backbone=backbone)
    finally:
        shutil.rmtree(work)
    return report["miou"]
