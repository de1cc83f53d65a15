"""Cost at Stable Diffusion's scale: every method on SD-1.5's architecture (random weights), in UNet forwards.

    python benchmarks/scale/scale.py                 # the recorded table (benchmarks/scale/results/scale.md and .json)
    python benchmarks/scale/scale.py --quick         # SD-1.5 at 512 px, 5 labels, every method (the issue's bar)
    python benchmarks/scale/scale.py --quick --only fastseg   # run one method's missing rows, keep the journal's others
    python benchmarks/scale/scale.py --arch flux1 --memory-pass   # each new row run again for its memory

Each row runs in its own process (so its peak memory is its own): build SD-1.5's UNet, VAE and CLIP-L text encoder
with random weights (`promptseg.models.sd_configs`, the published configs), time three bare UNet forwards (batch 1,
77 tokens, no capture) before the method and three after it and take the median of the six as the unit (this
CPU's speed drifts by up to 30% within minutes), run the method on a random image at the row's resolution (the
UNet's working size set to it, so 768 px means 96x96 latents, not a 768 px image resized to 512) with the
row's vocabulary (names from ADE20K-847's list, the first N) and report its seconds divided by that unit, VAE
encode included (the median of 3 runs after an untimed one; 1 run for the optimising invseg and anyword, for more
than 100 names and for a row with a filter), and the
process's peak resident memory. The reference row is a process that loads the weights, encodes the image and runs
one bare forward. Methods run with their defaults, SAM off for anyword (`sam=None`: no SAM can be loaded here;
timed on one referring expression, its task) and DPSeg's visual prompts drawn before timing (one-off, cached: their
cost is reported apart; one image per class and template, 1 generation step: at SD's size on this CPU the weights'
4 images of 25 steps would take hours, and with random weights what the prompts show does not change the cost of
segmenting).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"

QUICK = [("reference", 512, 5, "none")] + [(m, 512, 5, "none") for m in ("baseline", "fastseg", "invseg", "anyword",
                                                                           "dpseg")] + [
    ("fastseg", 512, 5, "none", {"flip": False}), ("fastseg", 512, 5, "none", {"invert": True}),
    ("fastseg", 512, 5, "none", {"flip_from": "latents"}),
    ("invseg", 512, 5, "none", {"view_pool": 0}), ("invseg", 512, 5, "none", {"view_pool": 4}),
    ("invseg", 512, 5, "none", {"views_from": "latents"}), ("anyword", 512, 5, "none", {"batch": 2})]
FULL = QUICK + [  # the ADE-847 bound first, then resolution, then vocabulary size and the default filter
    ("baseline", 512, 847, "none"), ("fastseg", 512, 847, "none"),
    ("baseline", 256, 5, "none"), ("fastseg", 256, 5, "none"), ("baseline", 768, 5, "none"), ("fastseg", 768, 5, "none"),
    ("reference", 256, 5, "none"), ("reference", 768, 5, "none"),
    ("baseline", 512, 21, "none"), ("fastseg", 512, 21, "none"), ("baseline", 512, 150, "none"),
    ("fastseg", 512, 150, "none"), ("baseline", 512, 21, "default"), ("baseline", 512, 150, "default"),
]


AT_1024 = [("reference", 1024, 5, "none"), ("baseline", 1024, 5, "none"), ("fastseg", 1024, 5, "none"),
           ("fastseg", 1024, 5, "none", {"flip": False})]
"""SDXL's UNet (`--arch sdxl`) and SD3-medium's transformer (`--arch sd3`) at their native 1024 px: a forward is
minutes on this CPU, so the rows are the one-pass methods, each run once, and the unit is the median of two bare
forwards (one before the method, one after). SD3's T5 is not built (its 256 rows are the pipeline's zeros)."""

DIT_ROWS = AT_1024 + [("conceptattention", 1024, 5, "none"), ("baseline", 1024, 5, "none", {"places": ["block9"]}),
                      ("fastseg", 1024, 5, "none", {"places": ["block9"]})]
"""SD3-medium's rows (`--arch sd3`): the one-pass methods, ConceptAttention (every block), Seg4Diff's read-out
(the baseline on block 9 alone, the forward ending there) and FastSeg on block 9 alone. The random-weight model is
built from parts, so SD3-medium's architecture profile (`"blocks": [9]`, which a user's SD3-medium gets) is not
applied: the plain rows read every block; the block-9 rows are what the profile gives."""
FLUX_ROWS = AT_1024 + [("conceptattention", 1024, 5, "none"), ("invseg", 1024, 5, "none"),
                       ("anyword", 1024, 5, "none"), ("dpseg", 1024, 5, "none"),
                       ("invseg", 1024, 5, "none", {"inversion_side": 1024}),
                       ("anyword", 1024, 5, "none", {"inversion_side": 1024})]
"""FLUX.1's rows (`--arch flux1`): its 19 double and 38 single blocks at reduced width (2 heads of 16 channels,
T5 and CLIP 64 and 32 wide), so every method's cost in transformer forwards can be measured here; seconds and memory
are not FLUX's (its 12B transformer does not fit this machine). The inversions run at 512 px by default
(`inversion_side`, `promptseg.diffusion.memory`); the `inversion_side` 1024 rows invert at the native size."""
FLUX2_ROWS = AT_1024 + [("invseg", 1024, 5, "none"), ("anyword", 1024, 5, "none")]
"""FLUX.2-klein's rows (`--arch flux2-klein-4b`): its 5 double and 20 single blocks at reduced width (2 heads of 16
channels, Qwen3 32 wide with its 36 layers), 512 text tokens, at its native 1024 px (a 64x64 token grid); as FLUX.1's,
forwards are measured here, seconds and memory are not klein's. ConceptAttention refuses FLUX.2; DPSeg has no
weights trained for it."""
ZIMAGE_ROWS = QWENIMAGE_ROWS = FLUX2_ROWS
"""Z-Image-Turbo's rows (`--arch zimage-turbo`): its 30 single-stream layers (and 2 + 2 refiner layers) at reduced
width (2 heads of 16 channels, a 4-layer Qwen3 32 wide), 512 text tokens, at its native 1024 px (a 64x64 token grid);
as FLUX.1's, forwards are measured here, seconds and memory are not Z-Image's. ConceptAttention refuses Z-Image."""
"""Qwen-Image's rows (`--arch qwen-image`) are the same: its 60 dual-stream blocks at reduced width (2 heads of 16
channels, a 2-layer Qwen2.5-VL text tower 32 wide), the kept prompt tokens, at 1024 px (a 64x64 token grid)."""

REFERRING = "the red car left of the big tree"
"""anyword's expression: one referring pass (what the issue's bar is for); its semantic mode refers once per label."""


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB


def timed(call, repeats: int):
    """(median seconds, timed runs, last result) of `repeats` calls of `call`; with `repeats` > 1 it is called once
    untimed first (one-off allocations)."""
    import numpy as np

    times = []
    for run in range(repeats + (repeats > 1)):
        start = time.perf_counter()
        result = call()
        if run or repeats == 1:
            times.append(time.perf_counter() - start)
    return float(np.median(times)), len(times), result


def one_row(method: str, side: int, n_labels: int, label_filter: str, arch: str, extra: dict | None = None) -> dict:
    """Run one row in this process; returns its record."""
    import numpy as np
    import torch
    from PIL import Image

    from promptseg.data.base import bundled_class_names
    from promptseg.diffusion.encode import prepare_pixels
    from promptseg.models import backbone_from_parts, flux, flux2, mmdit, qwenimage, zimage
    from promptseg.models.dit_configs import DIT_NAMES, build_dit
    from promptseg.models.flux2_configs import FLUX2_NAMES, build_flux2, flux2_configs
    from promptseg.models.flux_configs import FLUX_NAMES, build_flux, flux_configs
    from promptseg.models.qwenimage_configs import QWENIMAGE_NAMES, build_qwenimage
    from promptseg.models.sd_configs import build_sd
    from promptseg.models.zimage_configs import ZIMAGE_NAMES, build_zimage, zimage_configs
    from promptseg.pipeline import Pipeline
    from promptseg.text import parse_labels

    if arch in DIT_NAMES:  # a diffusion transformer: SD3-medium's, 1024 px native
        parts = build_dit(arch)
        parts["transformer"].register_to_config(sample_size=side // 8)
        backbone = mmdit.backbone_from_parts(f"random-{arch}", parts, device="cpu", dtype="fp32")
    elif arch in FLUX_NAMES:  # FLUX.1's exact block structure at reduced width, at its native 1024 px and T5 length
        parts = build_flux(arch, reduced=True)
        length = flux_configs(arch)["max_sequence_length"]
        parts["t5_tokenizer"].model_max_length = length
        backbone = flux.backbone_from_parts(f"random-{arch}-reduced-width", parts, device="cpu", dtype="fp32",
                                            method_defaults={"sample_size": side // 8, "max_sequence_length": length})
    elif arch in FLUX2_NAMES:  # FLUX.2-klein's block structure at reduced width, native 1024 px and 512 tokens
        parts = build_flux2(arch, reduced=True)
        length = flux2_configs(arch)["max_sequence_length"]
        backbone = flux2.backbone_from_parts(f"random-{arch}-reduced-width", parts, device="cpu", dtype="fp32",
                                             method_defaults={"sample_size": side // 16, "max_sequence_length": length})
    elif arch in QWENIMAGE_NAMES:  # Qwen-Image's block structure at reduced width, native 1024 px
        parts = build_qwenimage(arch, reduced=True)
        backbone = qwenimage.backbone_from_parts(f"random-{arch}-reduced-width", parts, device="cpu", dtype="fp32",
                                                 method_defaults={"sample_size": side // 8})
    elif arch in ZIMAGE_NAMES:  # Z-Image's layer structure at reduced width, native 1024 px and 512 tokens
        parts = build_zimage(arch, reduced=True)
        length = zimage_configs(arch)["max_sequence_length"]
        backbone = zimage.backbone_from_parts(f"random-{arch}-reduced-width", parts, device="cpu", dtype="fp32",
                                              method_defaults={"sample_size": side // 8, "max_sequence_length": length})
    else:
        parts = build_sd(arch)
        # the row's resolution is the model's working size (methods resize an image to the UNet's sample size): SD
        # at 256 or 768 px, as its users run it, rather than a larger image resized to 512
        parts["unet"].register_to_config(sample_size=side // 8)
        backbone = backbone_from_parts(f"random-{arch}", parts, device="cpu", dtype="fp32")
    assert backbone.image_size == (side, side), backbone.image_size
    image = Image.fromarray((np.random.default_rng(0).random((side, side, 3)) * 255).astype(np.uint8))
    if arch in FLUX2_NAMES:  # 128 patchified channels, a token a latent cell
        latents = torch.randn(1, 128, side // 16, side // 16)
    else:
        latents = torch.randn(1, 16 if arch in DIT_NAMES or arch in FLUX_NAMES or arch in ZIMAGE_NAMES
                              or arch in QWENIMAGE_NAMES else 4,
                              side // 8, side // 8)
    text = backbone.encode_text("a photograph of a cat")
    forwards = []

    unit_runs = 1 if side >= 1024 else 3  # a forward at 1024 px is a minute or more on this CPU

    def bare_forwards() -> None:
        with torch.no_grad():
            for _ in range(unit_runs):
                start = time.perf_counter()
                backbone.predict(latents, torch.tensor([100]), text)
                forwards.append(time.perf_counter() - start)

    bare_forwards()
    out = {"method": method, "side": side, "labels": n_labels, "filter": label_filter, "settings": extra or {}}
    # the median of 3 runs where a run is short; one run where it is long (the optimising methods, a vocabulary of
    # more than 100 names, the diffusion filter's (labels + 1) x 3 UNet items)
    repeats = 1 if method in ("invseg", "anyword") or n_labels > 100 or label_filter != "none" or side >= 1024 else 3
    if method == "reference":
        seconds, runs, _ = timed(lambda: prepare_pixels(backbone, image), repeats)
        out.update(seconds=seconds, runs=runs)
    else:
        # the dataset's lines, as the eval runner reads them: ADE20K-847 shares synonyms across lines ("screen")
        names = parse_labels(bundled_class_names("ade847")[:n_labels], shared_synonyms=True)
        settings = {"anyword": {"sam": None},
                    "dpseg": {"weights": "shapes-dpseg", "other_backbone": True, "generation_steps": 1, "prompt_images": 1,
                              "cache_dir": tempfile.mkdtemp(prefix="scale_dpseg_")}}
        pipe = Pipeline(backbone.name, method, settings={**settings.get(method, {}), **(extra or {})},
                        filter=None if label_filter == "default" else label_filter, refine="none",
                        task="refer" if method == "anyword" else "segment", backbone=backbone).load()
        segmenter, chosen = pipe.method.instance, "none" if pipe.filter is None else pipe.filter.name
        if method == "dpseg":  # draw the visual prompts once, timed apart
            start = time.perf_counter()
            segmenter(image, names)
            out["prompt_generation_s"] = time.perf_counter() - start
        def call():
            if method == "anyword":  # its task: one referring expression (a semantic call refers once per label)
                result = pipe.refer(image, REFERRING)
                result.label_map = result.mask
                return result
            return pipe.segment(image, names)

        seconds, runs, result = timed(call, repeats)
        out.update(seconds=seconds, runs=runs, filter_used=chosen, warnings=result.warnings[:2],
                   output_shape=list(result.label_map.shape))
    bare_forwards()  # again after the method: this CPU's speed drifts by up to 30% within minutes
    unit = float(np.median(forwards))
    out.update(bare_forward_s=unit, bare_forwards_s=forwards, forward_equivalents=out["seconds"] / unit)
    out["peak_rss_gb"] = peak_rss_gb()
    out["torch_threads"] = torch.get_num_threads()
    return out


MEMORY_PASS_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
"""The memory pass's allocator setting: glibc serves every allocation of 128 KB or more (every tensor that matters)
with its own mapping and unmaps it when freed, so the resident set follows the live tensors. With the default
(a threshold that grows as large blocks are freed) freed tensors stay in the heap, and the peak of two identical
runs of a row differed by up to 0.5 GB here (Segment Anyword on FLUX.1's structure: 0.88 to 1.42 GB)."""


def memory_pass(arch: str, key: str, timed: dict) -> dict:
    """The row run again with `MEMORY_PASS_ENV`: its peak RSS replaces the timed run's (kept as
    `peak_rss_gb_default_allocator`); seconds and forwards stay the timed run's (mapping every large block costs
    time)."""
    import os

    done = subprocess.run([sys.executable, __file__, "--arch", arch, "--row", key], capture_output=True, text=True,
                          env={**os.environ, **MEMORY_PASS_ENV})
    line = [x for x in done.stdout.splitlines() if x.startswith("ROW ")]
    if not line:
        return {"memory_pass_error": done.stderr[-600:]}
    return {"peak_rss_gb": json.loads(line[0][4:])["peak_rss_gb"], "peak_rss_gb_default_allocator": timed["peak_rss_gb"],
            "memory_pass": MEMORY_PASS_ENV}


def main() -> None:
    from fits import reference_memory  # beside this script

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--arch", default="sd15")
    parser.add_argument("--fresh", action="store_true", help="ignore the rows journal of an earlier run")
    parser.add_argument("--recorded", action="store_true", help="write the table from the journal's rows only")
    parser.add_argument("--only", default=None, help="comma-separated methods: run only their missing rows")
    parser.add_argument("--memory-pass", action="store_true",
                        help="run each new row a second time with glibc's mmap threshold fixed, for its memory")
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: one row as JSON
    args = parser.parse_args()
    if args.row:
        row = json.loads(args.row)
        print("ROW " + json.dumps(one_row(*row[:4], args.arch, *row[4:])))
        return
    stem = ("scale_quick" if args.quick else "scale") + ("" if args.arch == "sd15" else f"_{args.arch}")
    journal = RESULTS / f"{stem}_rows.jsonl"  # one line a finished row: a stopped run resumes where it was
    done_rows = {}
    if journal.exists() and not args.fresh:
        for line in journal.read_text().splitlines():
            r = json.loads(line)
            done_rows[json.dumps(r["row"])] = r
    rows = []
    for row in (AT_1024 if args.arch == "sdxl" else DIT_ROWS if args.arch in ("sd3", "sd35")
                else FLUX_ROWS if args.arch.startswith("flux1") else FLUX2_ROWS if args.arch.startswith("flux2")
                else ZIMAGE_ROWS if args.arch.startswith("zimage") else QWENIMAGE_ROWS if args.arch.startswith("qwen")
                else QUICK if args.quick else FULL):
        key = json.dumps(list(row))
        if key not in done_rows and (args.recorded or (args.only and row[0] not in args.only.split(","))):
            continue
        if key not in done_rows:
            done = subprocess.run([sys.executable, __file__, "--arch", args.arch, "--row", key], capture_output=True,
                                  text=True)
            line = [x for x in done.stdout.splitlines() if x.startswith("ROW ")]
            result = json.loads(line[0][4:]) if line else {"method": row[0], "side": row[1], "labels": row[2],
                                                           "filter": row[3], "error": done.stderr[-600:]}
            if args.memory_pass and "error" not in result:
                result.update(memory_pass(args.arch, key, result))
            done_rows[key] = {**result, "row": list(row)}
            with open(journal, "a") as f:
                f.write(json.dumps(done_rows[key]) + "\n")
        rows.append(done_rows[key])
        print(json.dumps(done_rows[key]), flush=True)
    references = {r["side"]: r for r in rows if r["method"] == "reference" and "error" not in r}  # one a resolution
    record = {"arch": args.arch, "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "rows": rows}
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=1))
    lines = [f"# Cost at SD's scale ({args.arch} architecture, random weights, CPU)", "",
             f"Made by `python benchmarks/scale/scale.py{' --quick' if args.quick else ''}{'' if args.arch == 'sd15' else ' --arch ' + args.arch}` on this 2-core CPU. Unit: the median "
             + ("of two bare denoiser forwards in the same process, one before the method and one after; each "
                "method run once" if args.arch in ("sdxl", "sd3", "sd35") or args.arch.startswith(("flux", "zimage", "qwen")) else
                "of six bare denoiser forwards in the same process, three before the method and three after")
             + "".join(f"; torch threads: {n}" for n in sorted({r["torch_threads"] for r in rows if "torch_threads" in r}))
             + (" (rows marked *earlier*: of three before it, no untimed first run, and older code; see the README)"
                if any("bare_forwards_s" not in r for r in rows if "error" not in r) else "") + ". Memory: the "
             "process's peak RSS; the bound is 1.5x the reference process at the row's resolution (weights, image "
             "encode, one bare forward)."
             + (" Rows marked *memory pass* were run a second time for their memory, glibc's mmap threshold fixed at "
                "128 KB (`--memory-pass`: freed tensors leave the resident set; with the default allocator two "
                "identical runs of a row differed by up to 0.5 GB here); the others' memory is the timed run's."
                if any("memory_pass" in r for r in rows) else ""),
             "", f"| method | side | labels | filter | seconds | {'transformer' if args.arch in ('sd3', 'sd35') or args.arch.startswith(('flux', 'zimage', 'qwen')) else 'UNet'}"
             "-forward equiv. | peak RSS (GB) | x reference memory |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['side']} | {r['labels']} | {r['filter']} | failed | - | - | - |")
            continue
        reference = references.get(r["side"])
        ratio = f"{r['peak_rss_gb'] / reference_memory(reference, r):.2f}" if reference else "-"
        used = r.get("filter_used", r["filter"])
        named = r["method"] + "".join(f", {k}={v}" for k, v in r.get("settings", {}).items())
        named += "" if "bare_forwards_s" in r else " *earlier*"
        named += " *memory pass*" if "memory_pass" in r else ""
        named += " (memory pass failed: the timed run's memory)" if "memory_pass_error" in r else ""
        lines.append(f"| {named} | {r['side']} | {r['labels']} | {used} | {r['seconds']:.1f} | "
                     f"{r['forward_equivalents']:.2f} | {r['peak_rss_gb']:.1f} | {ratio} |")
    gen = [r for r in rows if "prompt_generation_s" in r]
    if gen:
        lines += ["", "DPSeg's visual prompts (one-off, cached on disk; 1 image per class and template, 1 generation "
                  f"step): {gen[0]['prompt_generation_s']:.0f} s for {gen[0]['labels']} labels."]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
