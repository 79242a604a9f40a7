"""Command line: ``python -m kensa_pipeline <command> ...``.

Commands: ``generate``, ``train``, ``cv``, ``evaluate``, ``export``, ``export-random``,
``make-demo``. A dataset problem (missing image, bad row, undeclared label) is one line on
stderr naming the file and row, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from kensa_pipeline.train import TrainConfig


def _threads(n: int) -> None:
    torch.set_num_threads(n)
    torch.set_num_interop_threads(1)


def cmd_generate(a: argparse.Namespace) -> int:
    from kensa_pipeline.data.generator import GenConfig, generate

    p = generate(a.out, GenConfig(seed=a.seed, scale=a.scale, overlay_share=a.overlay_share))
    print(f"wrote {p}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from kensa_pipeline.train import TrainConfig, train_cli

    cfg = TrainConfig(
        seed=a.seed,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        patience=a.patience,
        min_epochs=a.min_epochs,
        class_weight_power=a.class_weight_power,
        balance=a.balance,
        freeze_encoders=a.freeze_encoders,
        fusion_epochs=a.fusion_epochs,
        fusion_lr=a.fusion_lr,
        fusion_freeze_encoders=not a.fusion_train_encoders,
        pfa_weight=0.0 if a.no_pfa else a.pfa_weight,
        augment=not a.no_augment,
        finetune_blocks=a.finetune_blocks if a.finetune_last_stage else 0,
        finetune_lr=a.finetune_lr,
    )
    res = train_cli(
        data=Path(a.data),
        out=Path(a.out),
        normal=a.normal,
        mode=a.mode,
        cfg=cfg,
        vision=a.vision,
        text=a.text,
        hf_vision=a.hf_vision,
        tokenizer=a.tokenizer,
        ablations=a.ablations,
        image_size=a.image_size,
        auto_norm=a.auto_norm,
        per_image_norm=a.per_image_norm,
        classes=_classes(a.classes),
        group_rule=a.group_rule,
        target_missed=a.target_missed,
        cache=Path(a.cache),
        anomaly_bank=a.anomaly_bank,
    )
    print(res["markdown"])
    print(
        json.dumps(
            {k: v for k, v in res.items() if k not in ("markdown", "table", "rows")}, indent=2
        )
    )
    return 0


def _classes(arg: str | None) -> list[str] | None:
    """``--classes a,b,c`` or ``--classes @file`` (one class per line)."""
    if not arg:
        return None
    if arg.startswith("@"):
        return [x.strip() for x in Path(arg[1:]).read_text().splitlines() if x.strip()]
    return [x.strip() for x in arg.split(",") if x.strip()]


def _train_config(a: argparse.Namespace) -> TrainConfig:
    from kensa_pipeline.train import TrainConfig

    return TrainConfig(
        seed=a.seed,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        patience=a.patience,
        min_epochs=a.min_epochs,
        class_weight_power=a.class_weight_power,
        balance=a.balance,
        freeze_encoders=a.freeze_encoders,
        fusion_epochs=a.fusion_epochs,
        fusion_lr=a.fusion_lr,
        fusion_freeze_encoders=not a.fusion_train_encoders,
        pfa_weight=0.0 if a.no_pfa else a.pfa_weight,
        augment=not a.no_augment,
        finetune_blocks=a.finetune_blocks if a.finetune_last_stage else 0,
        finetune_lr=a.finetune_lr,
    )


def cmd_cv(a: argparse.Namespace) -> int:
    from kensa_pipeline.cv import cv_markdown, run_cv

    res = run_cv(
        Path(a.data),
        a.normal,
        _classes(a.classes),
        a.group_rule,
        a.folds,
        a.seed,
        a.random_split,
        _train_config(a),
        a.target_missed,
        Path(a.cache),
        Path(a.out) if a.out else None,
        image_size=a.image_size,
        with_fused=not a.skip_fused,
        anomaly_bank=a.anomaly_bank,
    )
    print(cv_markdown(res))
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from kensa_pipeline.evaluate import evaluate_folder

    res = evaluate_folder(
        Path(a.model),
        Path(a.data),
        normal=a.normal,
        empty_notes=a.empty_notes,
        split=a.split,
        seed=a.seed,
        classes=_classes(a.classes),
        group_rule=a.group_rule,
        log=sys.stderr,
    )
    print(f"scored split {res['split']}: macro-F1 {res['macro_f1']:.3f}", file=sys.stderr)
    print(json.dumps(res, indent=2))
    return 0


def cmd_summarize(a: argparse.Namespace) -> int:
    from kensa_pipeline.report import summarize_runs

    print(summarize_runs([Path(r) for r in a.runs]))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from kensa_pipeline.train import export_run

    m = export_run(Path(a.run), Path(a.out), name=a.name, version=a.version)
    print(json.dumps(m["provenance"], indent=2))
    return 0


def cmd_export_random(a: argparse.Namespace) -> int:
    from kensa_pipeline.bench import export_random

    p = export_random(a.vision, a.text, Path(a.out), seed=a.seed, command=_command())
    print(f"wrote {p}")
    return 0


def cmd_make_demo(a: argparse.Namespace) -> int:
    from kensa_pipeline.demo import build_demo

    kw = {}
    if a.epochs:
        kw["epochs"] = a.epochs
    res = build_demo(
        Path(a.out),
        Path(a.data),
        seed=a.seed,
        scale=a.scale,
        untrained=a.untrained,
        train_kwargs=kw,
        command=_command(),
        tiny=a.tiny,
        target_missed=a.target_missed,
        anomaly_bank=a.anomaly_bank,
    )
    print(
        json.dumps(
            {k: v for k, v in res.items() if k not in ("ablation_markdown", "ablations")}, indent=2
        )
    )
    if "ablation_markdown" in res:
        print(res["ablation_markdown"])
    return 0


def _command() -> str:
    return "python -m kensa_pipeline " + " ".join(shlex.quote(x) for x in sys.argv[1:])


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--classes",
        default=None,
        help="declared classes: a,b,c or @file (else labels.json / the class folders)",
    )
    p.add_argument(
        "--group-rule",
        default=None,
        choices=["mt-runs"],
        help="group class-folder images into parts (mt-runs: magnetic-tile lighting runs)",
    )
    p.add_argument(
        "--target-missed",
        type=float,
        default=0.01,
        help="operating point: missed-defect rate target on validation (default 0.01)",
    )
    p.add_argument("--cache", default=".cache", help="tower graphs and feature cache")


def _finetune_args(t: argparse.ArgumentParser) -> None:
    t.add_argument(
        "--finetune-last-stage",
        action="store_true",
        help="pretrained EfficientNet: train its last block(s) and head conv with the "
        "image-only head, on cached feature maps (default: frozen tower)",
    )
    t.add_argument(
        "--finetune-blocks",
        type=int,
        default=1,
        help="with --finetune-last-stage: how many trailing MBConv blocks train (default 1 = "
        "stage 7; 4 = the last three of stage 6 too, same 7x7x192 cached input)",
    )
    t.add_argument(
        "--finetune-lr",
        type=float,
        default=1e-4,
        help="learning rate of the fine-tuned tower part (the head keeps --lr)",
    )


def _train_args(t: argparse.ArgumentParser) -> None:
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=36, help="stage 1 (single-modality) epochs")
    t.add_argument("--min-epochs", type=int, default=20, help="no early stop before this")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--patience", type=int, default=8)
    t.add_argument("--freeze-encoders", action="store_true", help=argparse.SUPPRESS)
    t.add_argument("--fusion-epochs", type=int, default=16)
    t.add_argument("--fusion-lr", type=float, default=1e-3)
    t.add_argument("--fusion-train-encoders", action="store_true", help=argparse.SUPPRESS)
    t.add_argument("--class-weight-power", type=float, default=1.0)
    t.add_argument("--balance", choices=["weights", "sampler"], default="weights")
    t.add_argument("--no-pfa", action="store_true")
    t.add_argument("--pfa-weight", type=float, default=0.2)
    t.add_argument("--no-augment", action="store_true")
    _finetune_args(t)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kensa_pipeline", description=__doc__)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write a synthetic ASE-like AOI dataset")
    g.add_argument("--out", required=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--scale", type=float, default=1.0, help="1.0 = 455 samples (ASE size)")
    g.add_argument(
        "--overlay-share",
        type=float,
        default=0.0,
        help="share of frames with the AOI text overlay burnt in (frames saved at 3x; default 0)",
    )
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("train", help="train on a dataset folder (notes JSONL or class folders)")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True, help="run folder (checkpoint, metrics, tokenizer)")
    t.add_argument("--normal", default="normal", help="name of the normal class")
    t.add_argument("--mode", default="cmaf", choices=["image", "text", "concat", "cmaf"])
    t.add_argument("--ablations", action="store_true", help="train all five variants")
    t.add_argument(
        "--vision",
        default="tiny",
        help="preset: tiny | vit-b16 | efficientnet-lite0 | efficientnet-lite0-mid (pretrained)",
    )
    t.add_argument(
        "--anomaly-bank",
        type=int,
        default=0,
        help="with --vision efficientnet-lite0-mid: anomaly score against a bank of this many "
        "normal mid-level patches of the training split, a constant of head.onnx (0 = off)",
    )
    t.add_argument("--hf-vision", default=None, help="local HF CLIP/SigLIP checkpoint dir")
    t.add_argument("--text", default="tiny", help="preset: tiny | minilm | minilm-l6 (pretrained)")
    _data_args(t)
    t.add_argument("--tokenizer", default=None, help="existing tokenizer.json (else trained)")
    t.add_argument("--image-size", type=int, default=None, help="override preset image size")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=36, help="stage 1 (single-modality) epochs")
    t.add_argument("--min-epochs", type=int, default=20, help="no early stop before this")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--patience", type=int, default=8)
    t.add_argument(
        "--freeze-encoders",
        action="store_true",
        help="stage 1: keep the encoders fixed (useful with a pretrained --hf-vision)",
    )
    t.add_argument("--fusion-epochs", type=int, default=16, help="stage 2 (fusion head) epochs")
    t.add_argument("--fusion-lr", type=float, default=1e-3, help="stage 2 learning rate")
    t.add_argument(
        "--fusion-train-encoders",
        action="store_true",
        help="stage 2: fine-tune the encoders too (default: frozen)",
    )
    t.add_argument(
        "--class-weight-power", type=float, default=1.0, help="class weight = inv. freq ** power"
    )
    t.add_argument(
        "--balance",
        choices=["weights", "sampler"],
        default="weights",
        help="class weights scale the loss, or drive a balanced sampler",
    )
    t.add_argument("--no-pfa", action="store_true")
    t.add_argument("--pfa-weight", type=float, default=0.2)
    t.add_argument("--no-augment", action="store_true")
    _finetune_args(t)
    t.add_argument(
        "--auto-norm",
        action="store_true",
        help="image mean/std from the training images (else 0.5/0.25 per channel)",
    )
    t.add_argument(
        "--per-image-norm",
        action="store_true",
        help="standardize each image inside the vision graph (gain/illumination invariance)",
    )
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("cv", help="k-fold cross-validation, frozen pretrained towers")
    c.add_argument("--data", required=True)
    c.add_argument("--out", default=None, help="folder for cv.json and cv.md")
    c.add_argument("--normal", default="normal")
    _data_args(c)
    c.add_argument("--folds", type=int, default=4)
    c.add_argument("--random-split", action="store_true", help="ignore groups (comparison only)")
    c.add_argument("--image-size", type=int, default=224, help="tower input size (multiple of 32)")
    c.add_argument(
        "--skip-fused", action="store_true", help="leave out the text and PFA+CMAF heads"
    )
    c.add_argument(
        "--anomaly-bank",
        type=int,
        default=0,
        help="also the anomaly-score variants (mid-level tower, kNN bank of this many normal "
        "patches from each fold's training split); 0 = off",
    )
    _train_args(c)
    c.set_defaults(func=cmd_cv)

    e = sub.add_parser("evaluate", help="evaluate an exported model folder with onnxruntime")
    e.add_argument("--model", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--normal", default="normal")
    e.add_argument("--empty-notes", action="store_true")
    e.add_argument(
        "--split",
        default="test",
        choices=["test", "val", "train", "all"],
        help="which split of the seeded split to score (default: the held-out test split)",
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the split (as in train)")
    e.add_argument("--classes", default=None, help="default: the model's labels")
    e.add_argument("--group-rule", default=None)
    e.set_defaults(func=cmd_evaluate)

    sm = sub.add_parser("summarize", help="mean ± sd tables over run folders (seeds)")
    sm.add_argument("runs", nargs="+")
    sm.set_defaults(func=cmd_summarize)

    x = sub.add_parser("export", help="export a training run into a model folder")
    x.add_argument("--run", required=True)
    x.add_argument("--out", required=True)
    x.add_argument("--name", default=None, help="model name (default: the run folder's name)")
    x.add_argument("--version", type=int, default=1, help="model version (default 1)")
    x.set_defaults(func=cmd_export)

    r = sub.add_parser("export-random", help="export presets with random weights (benchmarks)")
    r.add_argument("--vision", default="vit-b16")
    r.add_argument("--text", default="minilm")
    r.add_argument("--out", required=True)
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=cmd_export_random)

    d = sub.add_parser("make-demo", help="build models/demo (data, training, export, fixtures)")
    d.add_argument("--out", default="models/demo")
    d.add_argument("--data", default=".cache/data/synthetic-demo")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--scale", type=float, default=3.0)
    d.add_argument("--epochs", type=int, default=0, help="override training epochs")
    d.add_argument("--untrained", action="store_true", help="random weights (contract preview)")
    d.add_argument("--tiny", action="store_true", help="the tiny from-scratch model (test fixture)")
    d.add_argument("--target-missed", type=float, default=0.01)
    d.add_argument(
        "--anomaly-bank",
        type=int,
        default=0,
        help="pretrained demo on the efficientnet-lite0-mid tower with an anomaly bank of this "
        "many normal patches (0 = the shipped frozen demo)",
    )
    d.set_defaults(func=cmd_make_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from kensa_pipeline.data.formats import DatasetError

    a = build_parser().parse_args(argv)
    _threads(a.threads)
    try:
        return int(a.func(a))
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
