"""Training: class-balanced cross-entropy + progressive PFA loss, TDA, early stopping on
validation macro-F1, fixed seeds; the ablation suite (image-only, text-only, concat,
CMAF without PFA, full PFA+CMAF).

Fusion models train in two stages. Stage 1 trains the image-only and the text-only model;
their encoders stand in for the pretrained VLM image tower and language model of the paper,
which cannot be downloaded here. Stage 2 starts a fusion model from them (both encoders, both
projections and, for CMAF, the image-path classifier) and trains the head with the encoders
frozen, as the paper trains PFA + CMAF over fixed VLM/LLM features. Trained end to end from
scratch, the note branch learns within a few epochs and the image branch, which needs many
more, falls behind and is under-used (the model leans on the note); staging avoids that and
costs far less CPU, because frozen encoders need no backward pass.
"""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from kensa_pipeline.augment import augment_images, augment_note
from kensa_pipeline.data.formats import Dataset, load_dataset, split_indices
from kensa_pipeline.evaluate import compute_metrics, markdown_table
from kensa_pipeline.models.kensa import KensaModel, ModelSpec
from kensa_pipeline.models.pfa import PfaSchedule, progressive_info_nce
from kensa_pipeline.models.text import text_preset
from kensa_pipeline.models.vision import load_hf_vision, vision_preset
from kensa_pipeline.preprocess import preprocess_file
from kensa_pipeline.tokenizer import encode_batch, load_tokenizer, save_tokenizer, train_tokenizer


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    epochs: int = 36
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    patience: int = 8
    min_epochs: int = 20  # no early stop before this (image features start late from scratch)
    freeze_encoders: bool = False
    pfa_weight: float = 0.2
    pfa_temperature: float = 0.1
    augment: bool = True
    p_drop_note: float = 0.15
    label_smoothing: float = 0.05
    class_weight_power: float = 1.0  # class weights = (inverse class frequency) ** power
    # How the class weights act: "weights" scales the cross-entropy per class; "sampler"
    # draws each epoch's samples with those weights (with replacement) and leaves the loss
    # unweighted, which keeps gradients steady when a rare class is 30x rarer than normal.
    balance: str = "weights"
    # CMAF: extra CE on the image path alone (= the prediction with an empty note), so the
    # image branch keeps learning while the faster-learning note branch is available.
    image_aux_weight: float = 0.5
    max_minutes: float = 0.0  # 0 = no wall-clock limit
    # Stage 2 (fusion head over the stage-1 encoders): its own epoch budget and learning rate.
    fusion_epochs: int = 16
    fusion_lr: float = 1e-3
    fusion_freeze_encoders: bool = True
    # Auxiliary CE on the CAM classifier (linear patch classifier, see models/cmaf.py).
    cam_weight: float = 0.5
    # Fine-tuning of the pretrained EfficientNet tower (image-only stage): the last
    # ``finetune_blocks`` MBConv blocks + the head conv train at ``finetune_lr`` on cached
    # feature maps (0 = frozen tower, heads only).
    finetune_blocks: int = 0
    finetune_lr: float = 1e-4


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_images(ds: Dataset, spec: ModelSpec, indices: np.ndarray | None = None) -> torch.Tensor:
    """Reference-preprocess every image once: [N, C, H, W] float32."""
    v = spec.vision
    idx = np.arange(len(ds.samples)) if indices is None else indices
    arr = np.stack(
        [
            preprocess_file(
                ds.samples[int(i)].image,
                v.image_size,
                v.image_size,
                v.channels,
                spec.image_mean,
                spec.image_std,
            )
            for i in idx
        ]
    )
    return torch.from_numpy(arr)


def _batch_text(
    tok: Tokenizer, notes: list[str], max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = encode_batch(tok, notes, max_tokens)
    return torch.from_numpy(ids), torch.from_numpy(mask)


@torch.no_grad()
def predict(
    model: KensaModel,
    images: torch.Tensor,
    notes: list[str],
    tok: Tokenizer,
    batch_size: int = 64,
) -> np.ndarray:
    """Logits [N, C] (PyTorch, eval mode)."""
    model.eval()
    out = []
    for s in range(0, len(notes), batch_size):
        ids, mask = _batch_text(tok, notes[s : s + batch_size], model.spec.max_tokens)
        logits, _ = model(images[s : s + batch_size], ids, mask)
        out.append(logits)
    return torch.cat(out).numpy()


def train_model(
    spec: ModelSpec,
    images: torch.Tensor,
    ds: Dataset,
    splits: dict[str, np.ndarray],
    tok: Tokenizer,
    cfg: TrainConfig,
    log: Any = None,
    init: dict[str, torch.Tensor] | None = None,
) -> tuple[KensaModel, dict[str, Any]]:
    """Train one model; ``images`` holds all samples (indexed like ``ds.samples``).

    ``init`` is a partial state dict (e.g. pretrained encoders) loaded over the seeded
    initial weights; every key in it must exist in the model.
    """
    seed_everything(cfg.seed)
    model = KensaModel(spec, seed=cfg.seed)
    seed_everything(cfg.seed)
    if init is not None:
        unexpected = model.load_state_dict(init, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"initial weights do not fit the model: {unexpected[:5]}")
    y_all = torch.from_numpy(ds.targets())
    notes_all = [s.note for s in ds.samples]
    tr, va = splits["train"], splits["val"]
    counts = np.bincount(y_all[tr].numpy(), minlength=len(spec.labels)).astype(np.float64)
    w = (counts.sum() / (len(counts) * np.maximum(counts, 1))) ** cfg.class_weight_power
    if cfg.balance not in ("weights", "sampler"):
        raise ValueError(f"balance must be 'weights' or 'sampler', not {cfg.balance!r}")
    sampler = cfg.balance == "sampler"
    class_w = torch.tensor(np.ones_like(w) if sampler else w, dtype=torch.float32)
    draw_p = torch.tensor(w[y_all[tr].numpy()], dtype=torch.float64)

    if cfg.freeze_encoders:
        for p in list(model.vision.parameters()) + list(model.text.parameters()):
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ],
        lr=cfg.lr,
    )
    steps_per_epoch = max(1, int(np.ceil(len(tr) / cfg.batch_size)))
    total = steps_per_epoch * cfg.epochs
    warm = steps_per_epoch * cfg.warmup_epochs

    def lr_at(step: int) -> float:
        if step < warm:
            return cfg.lr * (step + 1) / warm
        prog = (step - warm) / max(1, total - warm)
        return cfg.lr * 0.5 * (1 + np.cos(np.pi * min(1.0, prog)))

    gen = torch.Generator().manual_seed(cfg.seed)
    nrng = np.random.default_rng(cfg.seed)
    sched = PfaSchedule()
    use_text = spec.mode != "image"
    use_pfa = cfg.pfa_weight > 0 and spec.mode in ("cmaf", "concat")

    def validate() -> tuple[float, float]:
        logits = predict(model, images[va], [notes_all[int(i)] for i in va], tok)
        yv = y_all[va].numpy()
        vloss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(yv)))
        m = compute_metrics(yv, logits.argmax(1), spec.labels, spec.labels.index(spec.normal_label))
        return float(m["macro_f1"]), vloss

    # The starting weights are the first candidate (epoch -1): a stage-2 run that does not
    # improve on its stage-1 start on validation keeps the start instead of ending worse.
    f1_start, loss_start = validate()
    best: dict[str, Any] = {"macro_f1": f1_start, "epoch": -1, "val_loss": loss_start}
    best_state = copy.deepcopy(model.state_dict())
    history = []
    step = 0
    bad = 0
    t0 = time.time()
    for epoch in range(cfg.epochs):
        model.train()
        if cfg.freeze_encoders:
            model.vision.eval()
            model.text.eval()
        if sampler:
            perm = tr[torch.multinomial(draw_p, len(tr), replacement=True, generator=gen).numpy()]
        else:
            perm = tr[torch.randperm(len(tr), generator=gen).numpy()]
        frac = sched.fraction(epoch, cfg.epochs)
        tot_ce = tot_pfa = 0.0
        n_b = 0
        for s in range(0, len(perm), cfg.batch_size):
            bi = perm[s : s + cfg.batch_size]
            if len(bi) < 2:
                continue
            x = images[bi]
            notes = [notes_all[int(i)] for i in bi]
            if cfg.augment:
                x = augment_images(x, gen)
                notes = [augment_note(n, nrng, cfg.p_drop_note) for n in notes]
            ids, mask = _batch_text(tok, notes, spec.max_tokens)
            y = y_all[bi]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            f = model.forward_features(x, ids, mask)
            ce = F.cross_entropy(
                f["logits"], y, weight=class_w, label_smoothing=cfg.label_smoothing
            )
            loss = ce
            if spec.mode == "cmaf" and cfg.image_aux_weight > 0:
                aux = F.cross_entropy(
                    model.head.classifier(f["img_vec"]),
                    y,
                    weight=class_w,
                    label_smoothing=cfg.label_smoothing,
                )
                loss = loss + cfg.image_aux_weight * aux
            if use_pfa and use_text:
                valid = f["has_content"][:, 0] > 0
                pfa = progressive_info_nce(
                    f["img_vec"], f["txt_vec"], y, valid, frac, cfg.pfa_temperature
                )
                loss = loss + cfg.pfa_weight * pfa
                tot_pfa += float(pfa.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            tot_ce += float(ce.detach())
            n_b += 1
        f1, vloss = validate()
        rec = {
            "epoch": epoch,
            "train_ce": tot_ce / max(1, n_b),
            "train_pfa": tot_pfa / max(1, n_b),
            "pfa_fraction": frac,
            "val_loss": vloss,
            "val_macro_f1": f1,
            "seconds": round(time.time() - t0, 1),
        }
        history.append(rec)
        if log is not None:
            print(json.dumps(rec), file=log, flush=True)
        improved = f1 > best["macro_f1"] + 1e-9 or (
            abs(f1 - best["macro_f1"]) <= 1e-9 and vloss < best["val_loss"]
        )
        if improved:
            best = {"macro_f1": f1, "epoch": epoch, "val_loss": vloss}
            best_state = copy.deepcopy(model.state_dict())
            bad = 0
        else:
            bad += 1
            if bad >= cfg.patience and epoch + 1 >= cfg.min_epochs:
                break
        if cfg.max_minutes and (time.time() - t0) > cfg.max_minutes * 60:
            break
    model.load_state_dict(best_state)
    model.eval()
    return model, {"best": best, "history": history, "seconds": round(time.time() - t0, 1)}


VARIANTS: list[tuple[str, str, bool]] = [
    # (name, head mode, PFA loss on); the two single-modality models come first (stage 1).
    ("image-only", "image", False),
    ("text-only", "text", False),
    ("concat fusion", "concat", False),
    ("CMAF without PFA", "cmaf", False),
    ("full PFA+CMAF", "cmaf", True),
]


def evaluate_model(
    model: KensaModel,
    images: torch.Tensor,
    ds: Dataset,
    idx: np.ndarray,
    tok: Tokenizer,
    empty_notes: bool = False,
) -> dict[str, Any]:
    notes = ["" if empty_notes else ds.samples[int(i)].note for i in idx]
    logits = predict(model, images[idx], notes, tok)
    y = ds.targets()[idx]
    return compute_metrics(y, logits.argmax(1), ds.names, ds.normal_index)


def fusion_init(image_model: KensaModel, text_model: KensaModel, mode: str) -> dict[str, Any]:
    """Stage-2 starting weights: both trained encoders and their projections; for CMAF also
    the image-only classifier, so that with an empty note the fused model starts out as
    exactly the image-only model (its note residual starts at zero)."""
    state: dict[str, Any] = {}
    for prefix, part in (("vision", image_model.vision), ("text", text_model.text)):
        state |= {f"{prefix}.{k}": v for k, v in part.state_dict().items()}
    for src, key in ((image_model, "img_"), (text_model, "txt_")):
        proj = src.head.proj.state_dict()
        state |= {f"head.proj.{k}": v for k, v in proj.items() if k.startswith(key)}
    if mode == "cmaf":
        clf = image_model.head.classifier.state_dict()
        state |= {f"head.classifier.{k}": v for k, v in clf.items()}
    if mode in ("cmaf", "concat"):
        state |= {f"head.cam.{k}": v for k, v in image_model.head.cam.state_dict().items()}
    if image_model.head.anomaly is not None:
        # the anomaly term of the image vector (bank buffers and trained projection)
        anom = image_model.head.anomaly.state_dict()
        state |= {f"head.anomaly.{k}": v for k, v in anom.items()}
    return state


def fusion_config(cfg: TrainConfig, pfa: bool) -> TrainConfig:
    """The stage-2 schedule derived from the run's configuration."""
    return replace(
        cfg,
        epochs=cfg.fusion_epochs,
        min_epochs=min(cfg.min_epochs, cfg.fusion_epochs // 2),
        warmup_epochs=1,
        lr=cfg.fusion_lr,
        freeze_encoders=cfg.fusion_freeze_encoders,
        pfa_weight=cfg.pfa_weight if pfa else 0.0,
    )


def run_ablations(
    ds: Dataset,
    splits: dict[str, np.ndarray],
    spec: ModelSpec,
    tokenizer_path: Path,
    cfg: TrainConfig,
    runs_dir: Path,
    variants: list[tuple[str, str, bool]] | None = None,
    log: Any = sys.stderr,
    images: torch.Tensor | None = None,
    vision_init: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train every variant with the same seed and budget; evaluate on the test split.

    The single-modality variants are trained first; fusion variants start from them (see the
    module docstring). Returns {"model": the last fusion model (the full PFA+CMAF one in the
    default list), "metrics": its test metrics, "table": rows, "markdown"}. Every fusion model
    is also evaluated with every note emptied.
    """
    tok = load_tokenizer(tokenizer_path)
    if images is None:
        images = load_images(ds, spec)
    te = splits["test"]
    rows: list[dict[str, Any]] = []
    trained: dict[str, KensaModel] = {}
    model: KensaModel | None = None
    m: dict[str, Any] = {}
    for name, mode, pfa in variants or VARIANTS:
        vspec = replace(spec, mode=mode)
        if mode in ("image", "text"):
            vcfg = replace(cfg, pfa_weight=0.0)
            init = {f"vision.{k}": v for k, v in (vision_init or {}).items()} or None
        else:
            missing = [mo for mo in ("image", "text") if mo not in trained]
            if missing:
                raise ValueError(f"fusion variant {name!r} needs the {missing} variant(s) first")
            vcfg = fusion_config(cfg, pfa)
            init = fusion_init(trained["image"], trained["text"], mode)
        if log is not None:
            print(f"== {name}", file=log, flush=True)
        model, info = train_model(vspec, images, ds, splits, tok, vcfg, log=log, init=init)
        if mode in ("image", "text"):
            trained[mode] = model
        m = evaluate_model(model, images, ds, te, tok)
        rows.append(
            {
                "variant": name,
                **m,
                "best_epoch": info["best"]["epoch"],
                "train_seconds": info["seconds"],
            }
        )
        d = runs_dir / name.replace(" ", "_").replace("+", "_")
        model.save(d)
        (d / "history.json").write_text(json.dumps(info, indent=2))
        if mode in ("concat", "cmaf"):
            me = evaluate_model(model, images, ds, te, tok, empty_notes=True)
            rows.append({"variant": f"{name}, notes emptied", **me})
    if model is None:
        raise ValueError("no variant to train")
    return {
        "model": model,
        "metrics": {"split": f"test ({len(te)} samples, seeded stratified 20%)", **m},
        "table": rows,
        "markdown": markdown_table(rows, ds.names),
    }


def train_cli(
    data: Path,
    out: Path,
    normal: str,
    mode: str,
    cfg: TrainConfig,
    vision: str,
    text: str,
    hf_vision: str | None,
    tokenizer: str | None,
    ablations: bool,
    image_size: int | None,
    auto_norm: bool = False,
    per_image_norm: bool = False,
    classes: list[str] | None = None,
    group_rule: str | None = None,
    target_missed: float = 0.01,
    cache: Path = Path(".cache"),
    anomaly_bank: int = 0,
) -> dict[str, Any]:
    """``python -m kensa_pipeline train``: writes run folder(s), metrics JSON + Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(data, normal, classes=classes, group_rule=group_rule)
    splits = split_indices(ds, cfg.seed)
    if vision_preset(vision).pretrained or text_preset(text).pretrained:
        return _train_frozen(
            ds,
            splits,
            data,
            out,
            mode,
            cfg,
            vision,
            text,
            ablations,
            target_missed,
            cache,
            image_size,
            anomaly_bank,
        )
    if anomaly_bank:
        raise ValueError("--anomaly-bank needs the pretrained --vision efficientnet-lite0-mid")
    if tokenizer:
        tok = load_tokenizer(tokenizer)
    else:
        notes = [ds.samples[int(i)].note for i in splits["train"]]
        tok = train_tokenizer(notes + ["lot strip unit via dia depth offset um remark"])
    save_tokenizer(tok, out / "tokenizer.json")
    vision_init = None
    if hf_vision:
        enc, hints = load_hf_vision(hf_vision)
        vcfg = enc.cfg
        vision_init = enc.state_dict()
        mean, std = hints["mean"], hints["std"]
    else:
        overrides: dict[str, Any] = {"per_image_norm": per_image_norm}
        if image_size:
            overrides["image_size"] = image_size
        vcfg = vision_preset(vision, **overrides)
        mean = [0.5] * vcfg.channels
        std = [0.25] * vcfg.channels
    tcfg = text_preset(text)
    if text == "tiny":
        tcfg = replace(tcfg, vocab_size=tok.get_vocab_size())
    spec = ModelSpec(
        vision=vcfg,
        text=tcfg,
        labels=ds.names,
        normal_label=ds.labels[ds.normal_index].name,
        mode=mode,
        image_mean=mean,
        image_std=std,
    )
    (out / "labels.json").write_text(json.dumps([asdict(lab) for lab in ds.labels], indent=2))
    (out / "dataset.json").write_text(json.dumps({"data": str(data), "normal": normal}))
    if auto_norm and not hf_vision:
        # Per-channel mean/std of the training images (written to the manifest), so that
        # dark or low-contrast datasets reach the network at unit scale.
        unit = replace(spec, image_mean=[0.0] * vcfg.channels, image_std=[1.0] * vcfg.channels)
        raw = load_images(ds, unit)
        tr_img = raw[splits["train"]]
        mean = [float(v) for v in tr_img.mean(dim=(0, 2, 3))]
        std = [max(1e-3, float(v)) for v in tr_img.std(dim=(0, 2, 3))]
        spec = replace(spec, image_mean=mean, image_std=std)
        images = (raw - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    else:
        images = load_images(ds, spec)
    if ablations:
        variants = VARIANTS
    else:
        single = {"image": "image-only", "text": "text-only"}
        fused = {"concat": "concat fusion", "cmaf": "PFA+CMAF" if cfg.pfa_weight > 0 else "CMAF"}
        if mode in single:
            variants = [(single[mode], mode, False)]
        else:
            variants = [VARIANTS[0], VARIANTS[1], (fused[mode], mode, cfg.pfa_weight > 0)]
    res = run_ablations(
        ds,
        splits,
        spec,
        out / "tokenizer.json",
        cfg,
        out / "runs",
        variants=variants,
        images=images,
        vision_init=vision_init,
    )
    res["model"].save(out)
    summary = {"model": variants[-1][0], "rows": res["table"]}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "metrics.md").write_text(res["markdown"] + "\n")
    return {"table": res["table"], "markdown": res["markdown"]}


def export_run(run: Path, out: Path, name: str | None = None, version: int = 1) -> dict[str, Any]:
    """Export a training run folder (from ``train``) into a model folder named ``name``
    (default: the run folder's name) at ``version`` (a new version of a served model)."""
    from kensa_pipeline import __version__
    from kensa_pipeline.export import export_model_folder, git_commit

    model = KensaModel.load(run)
    labels = json.loads((run / "labels.json").read_text())
    metrics: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    if (run / "metrics.json").exists():
        summary = json.loads((run / "metrics.json").read_text())
        metrics = next(r for r in summary["rows"] if r["variant"] == summary["model"])
    metrics = {
        k: v for k, v in metrics.items() if k not in ("variant", "best_epoch", "train_seconds", "n")
    }
    metrics["split"] = "test"
    towers = None
    ds_info = (
        json.loads((run / "dataset.json").read_text()) if (run / "dataset.json").exists() else {}
    )
    if ds_info.get("towers") and (Path(ds_info["towers"]) / "vision.onnx").exists():
        towers = Path(ds_info["towers"])
    provenance_extra: dict[str, Any] = {}
    if model.pretrained_prefixes():
        from kensa_pipeline.frozen import pretrained_provenance

        provenance_extra["pretrained"] = pretrained_provenance(model.spec)
    return export_model_folder(
        model,
        run / "tokenizer.json",
        out,
        name=name or run.name,
        version=version,
        description=f"kensa model exported from run {run}",
        labels=labels,
        metrics=metrics,
        provenance={
            "dataset": json.loads((run / "dataset.json").read_text())["data"]
            if (run / "dataset.json").exists()
            else "",
            "seed": 0,
            "git_commit": git_commit(),
            "command": "python -m kensa_pipeline " + " ".join(sys.argv[1:]),
            "pipeline_version": __version__,
            **provenance_extra,
        },
        towers=towers,
        decision=summary.get("decision"),
        validation_distribution=summary.get("validation_distribution"),
    )


def _variants(mode: str, ablations: bool, pfa: bool) -> list[tuple[str, str, bool]]:
    if ablations:
        return VARIANTS
    single = {"image": "image-only", "text": "text-only"}
    fused = {"concat": "concat fusion", "cmaf": "PFA+CMAF" if pfa else "CMAF"}
    if mode in single:
        return [(single[mode], mode, False)]
    return [VARIANTS[0], VARIANTS[1], (fused[mode], mode, pfa)]


def _train_frozen(
    ds: Dataset,
    splits: dict[str, np.ndarray],
    data: Path,
    out: Path,
    mode: str,
    cfg: TrainConfig,
    vision: str,
    text: str,
    ablations: bool,
    target_missed: float,
    cache: Path,
    image_size: int | None = None,
    anomaly_bank: int = 0,
) -> dict[str, Any]:
    """Pretrained frozen towers: cached features, heads only (see kensa_pipeline.frozen).
    With ``cfg.finetune_blocks`` the vision tower's last blocks train in the image-only
    stage, on cached feature maps (see kensa_pipeline.train_heads). With ``anomaly_bank``
    (tower ``efficientnet-lite0-mid``) every head gets the anomaly score against a bank of
    the training split's normal patches (kensa_pipeline.anomaly)."""
    from kensa_pipeline.cv import finetuned_name
    from kensa_pipeline.demo import PRETRAINED_MAX_TOKENS
    from kensa_pipeline.features import extract_features, extract_maps
    from kensa_pipeline.frozen import run_frozen, towers_for
    from kensa_pipeline.models.efficientnet import LITE_MEAN, LITE_STD, tuned_start
    from kensa_pipeline.models.text import minilm_tokenizer_path

    v = vision_preset(vision, **({"image_size": image_size} if image_size else {}))
    t = text_preset(text)
    if not (v.pretrained and t.pretrained):
        raise ValueError(
            "pretrained towers train frozen, both of them: use --vision efficientnet-lite0 "
            "with --text minilm-l6"
        )
    if anomaly_bank and (v.feature_grid != "mid" or cfg.finetune_blocks > 0):
        raise ValueError(
            "--anomaly-bank needs --vision efficientnet-lite0-mid (and no fine-tuning)"
        )
    save_tokenizer(load_tokenizer(minilm_tokenizer_path()), out / "tokenizer.json")
    spec = ModelSpec(
        vision=v,
        text=t,
        labels=ds.names,
        normal_label=ds.labels[ds.normal_index].name,
        mode=mode,
        image_mean=[LITE_MEAN],
        image_std=[LITE_STD],
        max_tokens=PRETRAINED_MAX_TOKENS,
        anomaly_bank=anomaly_bank,
    )
    towers = towers_for(replace(spec, anomaly_bank=0), cache)
    image: dict[str, Any] = {"height": v.image_size, "width": v.image_size, "channels": v.channels}
    image |= {"mean": spec.image_mean, "std": spec.image_std}
    feats = extract_features(
        ds,
        towers,
        image,
        out / "tokenizer.json",
        spec.max_tokens,
        cache / "features",
        threads=torch.get_num_threads(),
    )
    (out / "labels.json").write_text(json.dumps([asdict(lab) for lab in ds.labels], indent=2))
    (out / "dataset.json").write_text(json.dumps({"data": str(data), "towers": str(towers)}))
    variants = _variants(mode, ablations, cfg.pfa_weight > 0)
    maps = None
    if cfg.finetune_blocks > 0:
        if v.arch != "efficientnet-lite0":
            raise ValueError("fine-tuning the last stage needs --vision efficientnet-lite0")
        maps = extract_maps(ds, image, tuned_start(cfg.finetune_blocks), cache / "features")
        ft = finetuned_name(cfg.finetune_blocks)
        variants = [(ft, m, p) if m == "image" else (n, m, p) for n, m, p in variants]
    res = run_frozen(ds, splits, spec, cfg, feats, variants, target_missed, out / "runs", maps=maps)
    res["model"].save(out)
    summary = {
        "model": variants[-1][0],
        "rows": res["table"],
        "decision": res["decision"],
        "held_out": res["held_out"],
        "held_out_empty_notes": res["held_out_empty_notes"],
        "validation_distribution": res["validation_distribution"],
        "pointing": res["pointing"],
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "metrics.md").write_text(res["markdown"] + "\n")
    return {k: v for k, v in summary.items() if k != "validation_distribution"} | {
        "markdown": res["markdown"]
    }
