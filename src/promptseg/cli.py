"""promptseg: training-free open-vocabulary segmentation with frozen text-to-image diffusion models.

Give it images and any words (class names, or a sentence with `refer`) and it writes masks: a diffusion model's
attention read per word, optionally refined by prompt inversion, with no segmentation training. Start with
`promptseg segment IMAGE --labels "cat,sofa" --model shapes`; `make demo` and `make test` (the README's two
commands) run the bundled example and the tests.
"""

from __future__ import annotations

import argparse
import json
import sys

from promptseg import __version__
from promptseg.models import DEFAULT_MODEL


def _settings(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value  # parsed to the setting's type by promptseg.methods.method_config
    return out


def _filter_args(parser: argparse.ArgumentParser, default_help: str) -> None:
    parser.add_argument("--filter", default=None, help=f"class filter run before the method (see `promptseg filters`); "
                        f"'none' switches it off; default: {default_help}")
    parser.add_argument("--filter-set", dest="filter_settings", action="append", default=[], metavar="KEY=VALUE",
                        help="change a filter setting, value as JSON (e.g. --filter-set threshold=0.3)")


def _refine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--refine", default=None, help="refiner run on the label map (see `promptseg refiners`): none, "
                        "pamr, sam; default: the one the model recommends")
    parser.add_argument("--refine-set", dest="refine_settings", action="append", default=[], metavar="KEY=VALUE",
                        help="change a refiner setting, value as JSON (e.g. --refine-set sam=facebook/sam-vit-huge)")


def _loading_args(parser: argparse.ArgumentParser) -> None:
    """Where and how the model's weights load: --device, --dtype, --offload, --quantize."""
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA if available)")
    parser.add_argument("--dtype", default=None, help="fp32, fp16, bf16 (default: bf16/fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--offload", choices=("model", "sequential"), default=None,
                        help="keep the weights in CPU memory and run them on --device: model (a component at a time) "
                             "or sequential (a layer at a time: least GPU memory, slowest)")
    parser.add_argument("--quantize", default=None,
                        help="the denoiser's weights quantized: int8 (torchao), or a .gguf file of them (the "
                             "'quantize' extra)")


def _batch_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=1,
                        help="images segmented together: one denoiser forward for all of them where the method allows "
                             "(baseline, fastseg, conceptattention; the results equal one at a time)")


def _model_args(parser: argparse.ArgumentParser, default_method: str = "baseline") -> None:
    parser.add_argument("--method", default=default_method, help="segmentation method (see `promptseg methods`)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id, diffusers folder, .safetensors file or 'shapes'")
    _loading_args(parser)
    parser.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.bin/.pt checkpoints (can run code)")
    parser.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
        help="change a method setting, value as JSON (e.g. --set timestep=50 --set 'cross_weights={\"1.0\": 1}')",
    )


def _report(outcomes, out: str) -> int:
    """Print the files skipped and the count written; exit code 1 when a file was skipped."""
    failed = [o for o in outcomes if o.error]
    for outcome in failed:
        print(f"skipped {outcome.error}", file=sys.stderr)
    print(f"wrote {len(outcomes) - len(failed)} of {len(outcomes)} image(s) to {out}")
    return 1 if failed else 0


def cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from promptseg.api import image_paths, segment_files, split_cli_labels
    from promptseg.data.base import read_class_names

    if (args.labels is None) == (args.labels_file is None):
        raise SystemExit("give the classes with exactly one of --labels or --labels-file")
    labels = split_cli_labels(args.labels) if args.labels is not None else read_class_names(args.labels_file)
    paths = image_paths(args.images)
    bar = tqdm(total=len(paths), unit="image", disable=None)
    outcomes = segment_files(
        paths, labels, method=args.method, model=args.model, out_dir=args.out, device=args.device,
        dtype=args.dtype, settings=_settings(args.settings), prompt=args.prompt, allow_pickle=args.allow_pickle,
        offload=args.offload, quantize=args.quantize,
        filter=args.filter, filter_settings=_settings(args.filter_settings), refine=args.refine,
        refine_settings=_settings(args.refine_settings), on_progress=lambda outcome: bar.update(1),
        shared_synonyms=args.labels_file is not None,  # a class-name file may share words across lines (ADE-847)
        batch_size=args.batch_size,
    )
    bar.close()
    return _report(outcomes, args.out)


def cmd_label(args: argparse.Namespace) -> int:
    from promptseg.api import split_cli_labels
    from promptseg.data.base import read_class_names
    from promptseg.labelling import LabelRun, label_images

    if (args.labels is None) == (args.labels_file is None):
        raise SystemExit("give the classes with exactly one of --labels or --labels-file")
    vocabulary = split_cli_labels(args.labels) if args.labels is not None else read_class_names(args.labels_file)
    summary = label_images(LabelRun(
        inputs=args.images, vocabulary=vocabulary, out=args.out, method=args.method, model=args.model,
        settings=_settings(args.settings), prompt=args.prompt, filter=args.filter,
        filter_settings=_settings(args.filter_settings), refine=args.refine,
        refine_settings=_settings(args.refine_settings), min_area=args.min_area, device=args.device, dtype=args.dtype,
        offload=args.offload, quantize=args.quantize,
        allow_pickle=args.allow_pickle, shared_synonyms=args.labels_file is not None, batch_size=args.batch_size,
        formats=tuple(dict.fromkeys(f.strip() for f in args.format.split(",") if f.strip())),
        polygons=args.polygons, val_fraction=args.val_fraction,
    ))
    if summary is not None:
        for item in summary["skipped"]:
            print(f"skipped {item['file_name']}: {item['reason']}", file=sys.stderr)
        for item in summary["failed"]:
            print(f"failed {item['file_name']}: {item['error']}", file=sys.stderr)
        counts = ", ".join(f"{name} {n}" for name, n in summary["per_category"].items())
        print(f"labelled {summary['images']} image(s), skipped {len(summary['skipped'])}, failed "
              f"{len(summary['failed'])}; {summary['annotations']} annotation(s): {counts}; "
              f"{summary['seconds_per_image']:.2f} s/image -> {', '.join(summary['written'].values())}")
        if summary["failed"]:
            print("rerun the same command to try the failed images again", file=sys.stderr)
            return 1
    return 0


def _listing(kind: str):
    """A command that prints every registered entry of `kind` ("methods", "filters", "refiners") with its summary."""

    def command(args: argparse.Namespace) -> int:
        from promptseg.filters import list_filters
        from promptseg.methods import list_methods
        from promptseg.refiners import list_refiners

        listed = {"methods": list_methods, "filters": list_filters, "refiners": list_refiners}[kind]()
        for name, summary in listed.items():
            print(f"{name:10s} {summary}")
        return 0

    return command


def cmd_eval(args: argparse.Namespace) -> int:
    from promptseg.eval.runner import EvalRun, evaluate

    if args.task == "refer":
        return cmd_eval_refer(args)

    run = EvalRun(
        dataset=args.dataset, method=args.method, model=args.model, out=args.out, root=args.root, split=args.split,
        limit=args.limit, names=args.names, background=args.background, settings=_settings(args.settings),
        device=args.device, dtype=args.dtype, offload=args.offload, quantize=args.quantize,
        class_names_file=args.class_names, save_vis=args.save_vis, filter=args.filter,
        filter_settings=_settings(args.filter_settings), refine=args.refine,
        refine_settings=_settings(args.refine_settings), batch_size=args.batch_size,
    )
    report = evaluate(run)
    if report is not None:
        print(f"{args.method} on {args.dataset}: mIoU {100 * report['miou']:.2f}  mAcc {100 * report['macc']:.2f}  "
              f"({report['n_images']} images, {report['seconds_per_image']:.2f} s/image; filter {report['filter']}: "
              f"precision {100 * report['filter_precision']:.1f}, recall {100 * report['filter_recall']:.1f}) "
              f"-> {args.out}/report.md")
        for failure in report["failed"]:
            print(f"failed {failure['id']}: {failure['error']}", file=sys.stderr)
        if report["failed"]:
            print(f"{len(report['failed'])} image(s) failed (listed above and in the report); rerun the same command "
                  "to try them again", file=sys.stderr)
            return 1
    return 0


def cmd_refer(args: argparse.Namespace) -> int:
    from promptseg.api import refer_files

    outcomes = refer_files(
        args.images, args.expression, method=args.method, model=args.model, out_dir=args.out, device=args.device,
        dtype=args.dtype, settings=_settings(args.settings), allow_pickle=args.allow_pickle, offload=args.offload,
        quantize=args.quantize,
    )
    return _report(outcomes, args.out)


def cmd_maps(args: argparse.Namespace) -> int:
    from promptseg.api import map_files

    outcomes = map_files(args.images, [w for w in args.words.split(",")], model=args.model, out_dir=args.out,
                         device=args.device, dtype=args.dtype, places=args.places.split(",") if args.places else None,
                         timestep=args.timestep, per_layer=args.per_layer, seed=args.seed,
                         allow_pickle=args.allow_pickle, offload=args.offload, quantize=args.quantize)
    return _report(outcomes, args.out)


def cmd_eval_refer(args: argparse.Namespace) -> int:
    from promptseg.eval.refer_runner import ReferRun, evaluate_refer

    if (args.names != "oracle" or args.class_names or args.filter or args.filter_settings or args.refine
            or args.refine_settings):
        raise ValueError("--names, --class-names, --filter and --refine are for --task semantic; a referring run "
                         "takes none")
    run = ReferRun(
        dataset=args.dataset, method=args.method, model=args.model, out=args.out, root=args.root, split=args.split,
        limit=args.limit, settings=_settings(args.settings), device=args.device, dtype=args.dtype,
        offload=args.offload, quantize=args.quantize, save_vis=args.save_vis,
    )
    report = evaluate_refer(run)
    if report is not None:
        pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}"  # noqa: E731
        print(f"{args.method} on {args.dataset}: cIoU {pct(report['ciou'])}  gIoU {pct(report['giou'])}  "
              f"N-acc {pct(report['n_acc'])}  ({report['n_samples']} expressions, "
              f"{report['seconds_per_expression']:.2f} s each) -> {args.out}/report.md")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from promptseg.training.dpseg import train

    train(args)
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from promptseg.pipeline import explain_settings

    for row in explain_settings(args.model, args.method):
        print(f"{row.method:10s} {row.setting:22s} {json.dumps(row.value, default=str):40s} {row.origin}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from promptseg.demo import serve

    serve(model=args.model, host=args.host, port=args.port, device=args.device, dtype=args.dtype, offload=args.offload,
          quantize=args.quantize)
    return 0


def cmd_serve_labelstudio(args: argparse.Namespace) -> int:
    from promptseg.integrations.labelstudio import serve

    serve(args.model, args.method, host=args.host, port=args.port, min_area=args.min_area, settings=_settings(args.settings),
          filter=args.filter, filter_settings=_settings(args.filter_settings), refine=args.refine,
          refine_settings=_settings(args.refine_settings), device=args.device, dtype=args.dtype, offload=args.offload,
          quantize=args.quantize, allow_pickle=args.allow_pickle)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptseg", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"promptseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment images into the given classes")
    seg.add_argument("images", nargs="+", help="image files, folders (walked recursively) or glob patterns")
    seg.add_argument("--labels", help='classes, comma-separated; "|" joins synonyms of one class: "cat,person|people"')
    seg.add_argument("--labels-file", help="file with one class a line, commas separating synonyms")
    seg.add_argument("--out", default="promptseg_out", help="output folder")
    seg.add_argument("--prompt", "--caption", dest="prompt", default=None,
                     help="a caption of the image (fastseg) or the conditioning prompt (baseline with conditioning=prompt)")
    _model_args(seg)
    _filter_args(seg, "the one the model recommends")
    _refine_args(seg)
    _batch_args(seg)
    seg.set_defaults(func=cmd_segment)

    lab = sub.add_parser("label", help="label images into a dataset: COCO, YOLO-seg, masks, VOC (resumable; shard "
                         "with accelerate launch)")
    lab.add_argument("images", nargs="+", help="image files, folders (walked recursively) or glob patterns")
    lab.add_argument("--labels", help='classes, comma-separated; "|" joins synonyms of one class')
    lab.add_argument("--labels-file", help="file with one class a line, commas separating synonyms")
    lab.add_argument("--out", default="dataset", help="dataset folder (rerun with the same one to resume)")
    lab.add_argument("--min-area", type=int, default=16,
                     help="smallest region, in pixels, that gets an annotation (default 16)")
    lab.add_argument("--format", default="coco",
                     help="layouts to write, comma-separated: coco (annotations.json), yolo-seg (yolo/), masks "
                          "(masks/: a palette PNG and a binary PNG per class), voc (voc/); default coco")
    lab.add_argument("--polygons", action="store_true", help="COCO segmentations as polygons instead of RLE")
    lab.add_argument("--val-fraction", type=float, default=0.2,
                     help="share of images held out as val in the yolo-seg and voc layouts (default 0.2; 0: none)")
    lab.add_argument("--prompt", "--caption", dest="prompt", default=None, help="as for segment")
    _model_args(lab)
    _filter_args(lab, "the one the model recommends")
    _refine_args(lab)
    _batch_args(lab)
    lab.set_defaults(func=cmd_label)

    ev = sub.add_parser("eval", help="evaluate a method on a benchmark (resumable; shard with accelerate launch)")
    ev.add_argument("--task", choices=("semantic", "refer"), default="semantic",
                    help="semantic segmentation (mIoU) or referring segmentation (cIoU, gIoU, N-acc)")
    ev.add_argument("--dataset", required=True, help="semantic: voc21, voc20, context60, context59, coco_object, "
                    "ade150, ade847, context459, coco_stuff, shapes, scenes; refer: shapes_ref, scenes_ref, refcoco, "
                    "refcoco+, refcocog, grefcoco")
    ev.add_argument("--root", default=None, help="folder holding the dataset (not needed for the procedural worlds: "
                    "shapes, scenes, shapes_ref, scenes_ref)")
    ev.add_argument("--split", default=None, help="dataset split (default: val; shapes: test)")
    ev.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    ev.add_argument("--names", default="oracle", help="class names offered per image: oracle, all, or a JSON file")
    ev.add_argument("--background", choices=("threshold", "prompt"), default=None,
                    help="VOC21/Context60/COCO-Object: judge background by the method's threshold (the references; "
                         "default for methods that have one) or prompt its class line like any class")
    ev.add_argument("--class-names", default=None, help="your own class-name file (one class a line)")
    ev.add_argument("--save-vis", type=int, default=0, help="save prediction pictures of the first N images")
    ev.add_argument("--out", default="eval_out", help="output folder (rerun with the same one to resume)")
    _model_args(ev)
    _filter_args(ev, "none with --names oracle, else the one the model recommends")
    _refine_args(ev)
    _batch_args(ev)
    ev.set_defaults(func=cmd_eval)

    ref = sub.add_parser("refer", help="segment what a sentence refers to (Segment Anyword)")
    ref.add_argument("images", nargs="+", help="image files")
    ref.add_argument("expression", help='the referring expression, e.g. "the red circle left of the square"')
    ref.add_argument("--out", default="promptseg_out", help="output folder")
    _model_args(ref, default_method="anyword")
    ref.set_defaults(func=cmd_refer)

    maps = sub.add_parser("maps", help="word heat maps: where each word is attended in each image")
    maps.add_argument("images", nargs="+", help="image files")
    maps.add_argument("--words", required=True, help='words or phrases, comma-separated: "cat,red car" (one map each)')
    maps.add_argument("--model", default=DEFAULT_MODEL, help="hub id, diffusers folder, .safetensors file or 'shapes'")
    maps.add_argument("--places", default=None, help="layers read, comma-separated: down,mid,up (UNet) or block9,"
                      "single3,joint (transformer); default: the model's baseline read-out")
    maps.add_argument("--timestep", type=int, default=None, help="noise level read (default: the model's baseline's)")
    maps.add_argument("--per-layer", action="store_true", help="also store every layer's or block's maps in the .npz")
    maps.add_argument("--seed", type=int, default=0, help="seed of the noise")
    maps.add_argument("--out", default="promptseg_maps", help="output folder")
    _loading_args(maps)
    maps.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.bin/.pt checkpoints (can run code)")
    maps.set_defaults(func=cmd_maps)

    tr = sub.add_parser("train", help="train a method that learns (dpseg); runs under `accelerate launch` too")
    tr_sub = tr.add_subparsers(dest="trained_method", required=True)
    from promptseg.training.dpseg import add_arguments as dpseg_train_arguments

    dp = tr_sub.add_parser("dpseg", help="DPSeg's image encoder and decoder (shapes or COCO-Stuff)")
    dpseg_train_arguments(dp)
    dp.set_defaults(func=cmd_train)

    settings = sub.add_parser("settings", help="what each method runs with on a model, and where each value comes from")
    settings.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="hub id, diffusers folder or bundled name")
    settings.add_argument("--method", action="append", default=None, help="only this method (repeatable)")
    settings.set_defaults(func=cmd_settings)
    methods = sub.add_parser("methods", help="list the registered methods")
    methods.set_defaults(func=_listing("methods"))
    demo = sub.add_parser("demo", help="start the web demo (needs the 'demo' extra: pip install 'promptseg[demo]')")
    demo.add_argument("--model", default="shapes", help="hub id, diffusers folder, .safetensors file or 'shapes'")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 to share on your network)")
    demo.add_argument("--port", type=int, default=7860)
    _loading_args(demo)
    demo.set_defaults(func=cmd_demo)
    serve = sub.add_parser("serve", help="serve promptseg to a labelling tool (label-studio)")
    tools = serve.add_subparsers(dest="tool", required=True)
    studio = tools.add_parser("label-studio", help="a Label Studio ML backend: brush-label or polygon pre-annotations "
                              "in the project's classes (the 'labelstudio' extra)")
    studio.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for Label Studio in Docker)")
    studio.add_argument("--port", type=int, default=9090, help="port (default 9090, label-studio-ml's)")
    studio.add_argument("--min-area", type=int, default=16,
                        help="smallest region, in pixels, that becomes a result (default 16, as label's)")
    _model_args(studio)
    _filter_args(studio, "the one the model recommends")
    _refine_args(studio)
    studio.set_defaults(func=cmd_serve_labelstudio)
    filters = sub.add_parser("filters", help="list the registered class filters")
    filters.set_defaults(func=_listing("filters"))
    refiners = sub.add_parser("refiners", help="list the registered refiners")
    refiners.set_defaults(func=_listing("refiners"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError, ImportError) as err:
        print(f"promptseg: error: {err}", file=sys.stderr)
        return 2


def app() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    app()
