"""Builds the shipped demo model folder (``models/demo``) end to end.

generate synthetic data -> train tokenizer -> train the ablation variants -> export the full
PFA+CMAF model -> fixtures -> model card; written to a temp folder, then moved into place.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from kensa_pipeline import __version__
from kensa_pipeline.data.formats import load_dataset, split_indices
from kensa_pipeline.data.generator import GenConfig, generate
from kensa_pipeline.export import export_model_folder, git_commit, parity
from kensa_pipeline.fixtures import write_fixtures
from kensa_pipeline.models.kensa import KensaModel, ModelSpec
from kensa_pipeline.models.text import text_preset
from kensa_pipeline.models.vision import vision_preset
from kensa_pipeline.tokenizer import save_tokenizer, train_tokenizer

DESCRIPTION = (
    "Demo AOI defect classifier (tiny ViT + tiny BERT, PFA + CMAF fusion) trained on the "
    "synthetic ASE-like via dataset. For integration tests and demos, not for production."
)


def replace_folder(tmp: Path, dst: Path) -> None:
    """Move ``tmp`` to ``dst`` replacing any old content (rename-based, near atomic)."""
    dst = dst.resolve()
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        dst.rename(old)
    tmp.chmod(0o755)
    tmp.rename(dst)
    if old.exists():
        shutil.rmtree(old)


def build_demo(
    out: Path,
    data_dir: Path,
    seed: int = 0,
    scale: float = 3.0,
    untrained: bool = False,
    train_kwargs: dict[str, Any] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    t0 = time.time()
    torch.manual_seed(seed)
    gen = GenConfig(seed=seed, scale=scale)
    if not (data_dir / "data.jsonl").exists():
        generate(data_dir, gen)
    ds = load_dataset(data_dir)
    splits = split_indices(ds, seed)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=out.resolve().parent))
    work = Path(tempfile.mkdtemp(prefix="kensa-demo-work-"))
    tok = train_tokenizer([ds.samples[i].note for i in splits["train"]])
    save_tokenizer(tok, work / "tokenizer.json")
    labels = [
        {"name": lab.name, "display_name": lab.display_name, "is_normal": lab.is_normal}
        for lab in ds.labels
    ]
    spec = ModelSpec(
        vision=vision_preset("tiny"),
        text=text_preset("tiny", vocab_size=tok.get_vocab_size()),
        labels=ds.names,
        normal_label=ds.labels[ds.normal_index].name,
    )
    result: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    if untrained:
        model = KensaModel(spec).eval()
    else:
        from kensa_pipeline.train import TrainConfig, run_ablations

        cfg = TrainConfig(seed=seed, **(train_kwargs or {}))
        abl = run_ablations(ds, splits, spec, work / "tokenizer.json", cfg, work / "runs")
        model = abl["model"]
        metrics = abl["metrics"]
        result["ablations"] = abl["table"]
        result["ablation_markdown"] = abl["markdown"]
    export_model_folder(
        model,
        work / "tokenizer.json",
        tmp,
        name="kensa-demo",
        description=DESCRIPTION
        + (" UNTRAINED (random weights) contract preview." if untrained else ""),
        labels=labels,
        metrics=metrics,
        provenance={
            "dataset": f"synthetic-ase-vias (kensa_pipeline.data.generator, seed={seed}, scale={scale})",
            "seed": seed,
            "git_commit": git_commit(),
            "command": command or " ".join(sys.argv),
            "pipeline_version": __version__,
        },
    )
    result["parity"] = parity(model, tmp)
    write_fixtures(tmp, [ds.samples[i] for i in splits["test"]])
    if "ablation_markdown" in result:
        from kensa_pipeline.evaluate import model_card

        (tmp / "MODEL_CARD.md").write_text(
            model_card(result, metrics, gen, time.time() - t0, torch.get_num_threads())
        )
    (tmp / "fixtures" / "parity.json").write_text(json.dumps(result["parity"], indent=2) + "\n")
    replace_folder(tmp, out)
    shutil.rmtree(work, ignore_errors=True)
    return result
