"""The `ctxemo` command line: demo, synth, import-seed, embed, train, cv, ablate, predict, evaluate, report, export.

Config-driven commands take a YAML file plus `key=value` overrides and write a run folder; rerunning
the same command on the same folder resumes (finished folds / arms / embedding shards are kept).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ctxemo.errors import CtxemoError
from ctxemo.inference.bundle import load_bundle
from ctxemo.inference.predict import (
    parse_channels,
    predict_inputs,
    segmenter_from_overrides,
    split_segmenter_overrides,
)
from ctxemo.io import private_outputs


def _int_at_least(low: int):
    """argparse type: an integer >= low (a negative seed or zero calls is a typo, not a request)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def _config_and_run_dir(args, command: str):
    """The resolved config and its run folder's guard (refuses another config's folder unless --overwrite)."""
    from ctxemo.config import load_config
    from ctxemo.runinfo import RunFolder

    cfg = load_config([args.config], args.overrides)
    run_dir = Path(args.out) if args.out else Path(cfg.out_dir) / f"{cfg.name}-{command}"
    return cfg, RunFolder(run_dir, cfg, overwrite=args.overwrite)


def cmd_demo(args) -> None:
    from ctxemo.studies.demo import run_demo

    run_demo(args.out, n_calls=args.calls, seed=args.seed, overrides=args.overrides, progress=not args.quiet,
             overwrite=args.overwrite)


def cmd_synth(args) -> None:
    from ctxemo.data.synthetic import generate_corpus
    from ctxemo.data.synthetic_voice import write_call_recordings

    manifest = generate_corpus(Path(args.out), n_calls=args.calls, seed=args.seed, progress=not args.quiet)
    print(f"wrote {manifest}")
    if args.recordings:
        from ctxemo.config import DEFAULT_LABELS
        from ctxemo.data.manifest import load_manifest
        from ctxemo.taxonomy import Taxonomy

        calls = load_manifest(manifest, Taxonomy(labels=tuple(DEFAULT_LABELS))).call_ids()[: args.recordings]
        turns = write_call_recordings(manifest, Path(args.out) / "recordings", call_ids=calls, seed=args.seed)
        print(f"wrote {len(calls)} whole-call recordings to {turns.parent} (true turn boundaries: {turns})")


def cmd_import_seed(args) -> None:
    from ctxemo.config import load_config
    from ctxemo.data.seed_import import import_seed
    from ctxemo.taxonomy import Taxonomy

    cfg = load_config([args.config] if args.config else [], args.overrides)
    result = import_seed(args.seed_dir, args.out, Taxonomy.from_config(cfg.taxonomy), caller_map=args.callers,
                         encoding=args.encoding, allow_missing=args.allow_missing)
    for call, reason in result.skipped:
        print(f"ctxemo import-seed: warning: call {call} not imported: {reason}", file=sys.stderr)
    for warning in result.warnings:
        print(f"ctxemo import-seed: warning: {warning}", file=sys.stderr)
    print(f"wrote {result.manifest} ({len(result.calls)} calls" + (f", {len(result.skipped)} not imported)"
                                                                    if result.skipped else ")"))


def cmd_embed(args) -> None:
    from ctxemo.embedding.corpus import load_corpus

    cfg, folder = _config_and_run_dir(args, "embed")
    # With --out the cache lives in the run folder: --overwrite keeps it (row-checked, see RunFolder).
    data = load_corpus(cfg, cache_root=folder.path / "cache" if args.out else None, progress=not args.quiet,
                       check_inputs=folder.check_inputs)
    folder.start(command="embed", inputs=data.inputs)
    print(f"embeddings: {data.feats.shape[0]} segments x {data.feats.shape[1]} dims")


def cmd_cv(args) -> None:
    from ctxemo.evaluation.evaluate import HEADLINE
    from ctxemo.reports.tables import print_comparison
    from ctxemo.studies.cv import run_cv
    from ctxemo.training import distributed

    cfg, folder = _config_and_run_dir(args, "cv")
    distributed.init_from_env()  # under torchrun: every rank trains, rank 0 alone writes and prints
    summary = run_cv(cfg, folder.path, folder=folder, progress=not args.quiet)
    if distributed.is_main():
        print(print_comparison({cfg.name: summary}, {}, reference=cfg.name,
                               metrics=[m for m in HEADLINE if m in summary]))
        print(f"results in {folder.path}")


def cmd_ablate(args) -> None:
    from ctxemo.studies.ablation import run_ablation
    from ctxemo.training import distributed

    cfg, folder = _config_and_run_dir(args, "ablate")
    distributed.init_from_env()
    run_ablation(cfg, folder.path, folder=folder, progress=not args.quiet)
    if distributed.is_main():
        print(f"results in {folder.path}")


def cmd_report(args) -> None:
    from ctxemo.reports.comparison import regenerate
    from ctxemo.reports.html_report import write_report

    if args.table == "seed":
        from ctxemo.reports.seed_table import seed_table

        print(seed_table([Path(p) for p in args.run_dirs], out=Path(args.out) if args.out else None))
        return
    for run_dir in args.run_dirs:
        print(regenerate(Path(run_dir)))
        print(f"wrote {write_report(Path(run_dir))}")


def cmd_train(args) -> None:
    from ctxemo.studies.train_bundle import train_bundle

    cfg, folder = _config_and_run_dir(args, "train")
    train_bundle(cfg, folder.path, progress=not args.quiet, folder=folder)


def cmd_evaluate(args) -> None:
    from ctxemo.studies.evaluate_bundle import evaluate_bundle

    evaluate_bundle(args.bundle, args.manifest, args.out, features=args.features)


def cmd_predict(args) -> None:

    predict_command(args)


def cmd_export(args) -> None:
    from ctxemo.inference.export_onnx import export_bundle

    export_bundle(args.bundle, args.out, format=args.format, log=print)


OVERWRITE_HELP = ("start the run folder clean: its previous results are deleted (the row-checked embedding "
                  "cache is kept); needed to reuse a folder that holds another config or other inputs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctxemo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def config_command(name: str, func, help_text: str):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config", help="YAML config file")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5")
        p.add_argument("--out", help="run folder (default: <out_dir>/<name>-<command>)")
        p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=func)
        return p

    p = sub.add_parser("demo", help="synthetic corpus -> isolated vs contextual CV, in minutes on a CPU")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the demo config")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--calls", type=_int_at_least(1), default=60)
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="write a synthetic hotline corpus (wav files + manifest.csv)")
    p.add_argument("--out", required=True)
    p.add_argument("--calls", type=_int_at_least(1), default=48)
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.add_argument("--recordings", type=_int_at_least(0), default=0, help="also write N whole-call stereo recordings")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("import-seed", help="seed study layout (per-call CSV + <call>/<index>.wav) -> manifest")
    p.add_argument("seed_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--callers", help="optional CSV call_id,caller_id (for caller-grouped folds)")
    p.add_argument("--config", help="YAML config whose taxonomy to use (default: the 11 hotline labels)")
    p.add_argument("--encoding", help="text encoding of the CSVs (default: UTF-8, with or without BOM, else GB18030/GBK)")
    p.add_argument("--allow-missing", action="store_true",
                   help="write the calls that could be imported even if some could not (they are listed)")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_import_seed)

    config_command("embed", cmd_embed, "embed every manifest segment once (cached, resumable)")
    config_command("train", cmd_train, "train one model on all callers and write a model bundle")
    config_command("cv", cmd_cv, "caller-grouped K-fold cross-validation of one config")
    config_command("ablate", cmd_ablate, "every arm of ablation.arms on the same folds + paired tests")

    p = sub.add_parser("report", help="regenerate tables, plots and report.html of run folders")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--table", choices=["seed"], help="seed: the seed study's table (one row per encoder) of "
                   "the given cv runs, printed instead of regenerating them")
    p.add_argument("--out", help="with --table: also write it as <out>.md and <out>.csv")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("evaluate", help="score a labelled held-out manifest with a bundle: metrics.json + "
                       "predictions.csv, as a CV fold writes them")
    p.add_argument("bundle", help="model bundle folder written by `ctxemo train`")
    p.add_argument("manifest", help="labelled manifest (.csv/.jsonl) of callers the bundle was not trained on")
    p.add_argument("--features", help="float32 .npy [N, D] aligned to the manifest (skips the encoder)")
    p.add_argument("--out", default="evaluation", help="output folder (default: evaluation)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="score a manifest or whole-call recordings with a model bundle",
                       description="Score manifests or whole-call recordings with a model bundle. Exits 0 when at "
                                   "least one call was scored (or kept from an earlier run into --out), 2 when "
                                   "none was; every input, call or segment not scored is a row of skipped.csv.")
    p.add_argument("bundle", help="model bundle folder written by `ctxemo train` (e.g. runs/demo-train/bundle)")
    p.add_argument("inputs", nargs="+", help="manifests (.csv/.jsonl), recordings (.wav/.flac/.ogg/.mp3) or folders "
                                             "of recordings; every other file in a folder is named and not read; "
                                             "segmenter.KEY=VALUE items set the segmenter (e.g. segmenter.vad=energy "
                                             "segmenter.min_turn_sec=0.3)")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions); rerunning into it "
                                                        "with the same bundle and options resumes")
    p.add_argument("--live", action="store_true", help="score as if each call arrived segment by segment (needs a "
                                                       "causal bundle); adds latency_ms per segment")
    p.add_argument("--channels", default=None, help="role of each channel, comma-separated: caller, operator or "
                                                    "ignore (default caller,operator for stereo; a mono recording "
                                                    "without it is scored as all caller, roles unknown)")
    p.add_argument("--plot", action="store_true", help="write plots/<call_id>.png, p_negative along each call")
    p.add_argument("--features", help="float32 .npy [N, D] aligned to a manifest input (skips the encoder)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no per-call lines (the final line "
                                                        "and errors are still printed)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="a model bundle as ONNX graphs (encoder with LoRA merged, context model + "
                                      "heads) + thresholds and taxonomy, for onnxruntime")
    p.add_argument("bundle", help="model bundle folder written by `ctxemo train`")
    p.add_argument("--out", required=True, help="export folder (replaced atomically if it exists)")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default onnx)")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `ctxemo cv cfg.yaml --out X key=val`: overrides after an option arrive as extras.
    if extra:
        if hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        with private_outputs():  # every output file 0600, folder 0700 (ctxemo/io.py says why)
            args.func(args)
    except CtxemoError as exc:
        print(f"ctxemo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. --out names a file, permission denied, disk full
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"ctxemo {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ctxemo {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())


def predict_command(args) -> None:
    """`ctxemo predict BUNDLE INPUT... [--out DIR] [--live] [--channels caller,operator] [--plot] [--quiet]`."""
    from tqdm import tqdm

    # tqdm.write keeps the lines above the progress bars.
    log = (lambda message: None) if args.quiet else (lambda message: tqdm.write(message, file=sys.stderr))
    inputs, overrides = split_segmenter_overrides(args.inputs)  # `segmenter.vad=energy` etc. among the inputs
    if not inputs:
        raise CtxemoError("no input given: name manifests, recordings or folders (segmenter.* items are settings)")
    segmenter = segmenter_from_overrides(overrides)
    bundle = load_bundle(args.bundle, device="auto")
    summary = predict_inputs(bundle, inputs, args.out, channels=parse_channels(args.channels), live=args.live,
                             plot=args.plot, features=getattr(args, "features", None), segmenter=segmenter, log=log,
                             progress=not args.quiet)
    kept = f", kept {len(summary.resumed)} finished earlier" if summary.resumed else ""
    print(f"scored {len(summary.calls)} call(s), skipped {len(summary.skipped)} item(s){kept}; "
          f"results in {summary.out_dir}")
    if summary.errors:
        raise CtxemoError(f"{summary.errors} input(s) failed with unexpected errors (see skipped.csv and the "
                          "tracebacks above); the other calls were written")
    if not summary.calls and not summary.resumed:  # a run that scored nothing must not look like success
        raise CtxemoError(f"no call was scored; the reasons are in {summary.out_dir / 'skipped.csv'}")
