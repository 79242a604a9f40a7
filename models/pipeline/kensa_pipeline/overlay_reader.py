"""A small reader for one machine's overlay font: a line detector and a line recogniser in the
shape of PP-OCR's two graphs, so the service's reader (``src/ocr``) runs them unchanged.

PP-OCRv4 reads any font and two scripts, and costs about ten times a demo request's CPU. An
AOI machine prints one font in a fixed layout, which a network of a few hundred thousand
weights learns from rendered lines alone (no labelled frames). Both graphs keep PP-OCR's
interfaces:

* detector: ``x`` N x 3 x H x W (sides multiples of 32, ``(v / 255 - 0.5) / 0.5``, BGR) to a
  text probability map N x 1 x H x W. It is trained on the *shrunk* line boxes that the DB
  post-processing (threshold, dilation, unclip by 1.6) grows back to the printed line.
* recogniser: ``x`` N x 3 x 48 x W to per-step class probabilities N x W/4 x C, CTC blank
  first, then :data:`CHARSET`, then the space (the ``character`` metadata lists the charset).

Training data: lines in Pillow's built-in font (the one :mod:`kensa_pipeline.overlay` prints),
overlay-shaped and random, at 11 to 26 px, light on dark and dark on light, on plain and band
backgrounds, on textured substrates and on the generator's via frames, blurred and noisy.

    python -m kensa_pipeline.overlay_reader --out models/ocr-overlay
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from torch import nn
from torch.nn import functional as F

from kensa_pipeline.overlay import overlay_lines

# Characters the recogniser knows besides the space (which PP-OCR's decoding appends).
CHARSET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.,:;-_/#%+()=<>"
LINE_HEIGHT = 48
# The DB post-processing the service and rapidocr apply (src/ocr/mod.rs, rapidocr's config).
UNCLIP_RATIO = 1.6
# The recogniser's narrowest input (PP-OCR pads every line to at least 320 x 48).
MIN_LINE_WIDTH = 320


@dataclass(frozen=True)
class TrainConfig:
    """Steps, batch sizes and seed of one training run (defaults: the shipped reader)."""

    recogniser_steps: int = 5000
    recogniser_batch: int = 16
    detector_steps: int = 1500
    detector_batch: int = 8
    detector_side: int = 256
    seed: int = 0


def _block(
    cin: int, cout: int, stride: Any = 1, kernel: Any = 3, padding: Any = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class LineRecogniser(nn.Module):
    """A CRNN without the recurrence: convolutions bring a 48 px line to one row of W/4
    steps, two wide 1-D convolutions give each step its neighbours, a 1x1 scores classes."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_block(3, 16, 2),
            *_block(16, 32, 2),
            *_block(32, 48, (2, 1)),
            *_block(48, 64, (2, 1)),
            *_block(64, 96, 1, (3, 1), 0),
        )
        self.context = nn.Sequential(
            nn.Conv1d(96, 96, 5, padding=2, bias=False),
            nn.BatchNorm1d(96),
            nn.ReLU(inplace=True),
            nn.Conv1d(96, 96, 5, padding=2, bias=False),
            nn.BatchNorm1d(96),
            nn.ReLU(inplace=True),
        )
        self.classify = nn.Conv1d(96, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, N x steps x classes."""
        f = self.features(x).squeeze(2)
        f = f + self.context(f)
        return self.classify(f).transpose(1, 2)


class LineDetector(nn.Module):
    """A two-scale text map: an encoder to 1/8 with dilated context, one skip at 1/4, and 16
    values per 1/4 cell unfolded into its 4 x 4 pixels (cheaper than resizing the map)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Sequential(*_block(3, 8, 2), *_block(8, 16, 2))
        self.deep = nn.Sequential(
            *_block(16, 24, 2),
            nn.Conv2d(24, 24, 3, 1, 2, dilation=2, bias=False),
            nn.BatchNorm2d(24),
            nn.ReLU(inplace=True),
            nn.Conv2d(24, 24, 3, 1, 4, dilation=4, bias=False),
            nn.BatchNorm2d(24),
            nn.ReLU(inplace=True),
        )
        self.skip = nn.Conv2d(16, 24, 1)
        self.head = nn.Conv2d(24, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, N x 1 x H x W."""
        quarter = self.down(x)
        deep = F.interpolate(self.deep(quarter), scale_factor=2.0, mode="bilinear")
        return F.pixel_shuffle(self.head(F.relu(deep + self.skip(quarter))), 4)


class _Probabilities(nn.Module):
    """What the exported graph answers: probabilities, as PP-OCR's graphs do."""

    def __init__(self, net: nn.Module, dim: int | None) -> None:
        super().__init__()
        self.net = net
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return torch.sigmoid(out) if self.dim is None else torch.softmax(out, dim=self.dim)


def random_line(rng: np.random.Generator) -> str:
    """An overlay-shaped line (unit id, or measurements and calls) or random words."""
    u = rng.random()
    if u < 0.6:
        lot = f"L{rng.integers(1000, 10000)}-{rng.integers(0, 100):02d}"
        pos = f"R{rng.integers(1, 10)}C{rng.integers(0, 100):02d}"
        calls = [c for c in ("DIA_HI", "DEPTH_HI", "OFS_HI", "GRAY") if rng.random() < 0.3]
        lines = overlay_lines(
            lot,
            pos,
            float(rng.uniform(0, 120)),
            float(rng.uniform(0, 120)),
            float(rng.uniform(0, 30)),
            calls or ["NONE"],
        )
        return lines[int(rng.integers(2))]
    words = []
    for _ in range(int(rng.integers(1, 5))):
        length = int(rng.integers(1, 9))
        words.append("".join(CHARSET[int(i)] for i in rng.integers(0, len(CHARSET), length)))
    return " ".join(words)


def _levels(rng: np.random.Generator) -> tuple[int, int]:
    """Background and text grey levels at least 60 apart."""
    while True:
        back, text = (int(v) for v in rng.integers(0, 256, 2))
        if abs(back - text) >= 60:
            return back, text


def _degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Blur (most frames) and Gaussian noise, as saved frames have."""
    if rng.random() < 0.6:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 0.9))))
    pixels = np.asarray(image, dtype=np.float64)
    noisy = pixels + rng.normal(0.0, float(rng.uniform(0.0, 8.0)), pixels.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def line_tensor(crops: list[Image.Image]) -> torch.Tensor:
    """Grey crops as the service feeds them: height 48, width by aspect, normalised, padded
    with zeros to the widest (at least 320)."""
    widths = [max(1, math.ceil(LINE_HEIGHT * c.width / c.height)) for c in crops]
    width = max(MIN_LINE_WIDTH, *widths)
    width += -width % 4
    batch = torch.zeros(len(crops), 3, LINE_HEIGHT, width)
    for row, (crop, w) in enumerate(zip(crops, widths, strict=True)):
        resized = crop.convert("L").resize((w, LINE_HEIGHT), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 127.5 - 1.0)
        batch[row, :, :, :w] = pixels
    return batch


def encode(text: str) -> list[int]:
    """Class indices of ``text`` (1-based into CHARSET; the space is the last class)."""
    space = len(CHARSET) + 1
    return [space if c == " " else CHARSET.index(c) + 1 for c in text]


def shrink_distance(width: float, height: float, ratio: float = UNCLIP_RATIO) -> float:
    """How far to pull a box's sides in so that unclipping the rest by ``ratio`` (distance
    area * ratio / perimeter) gives the box back."""
    lo, hi = 0.0, min(width, height) / 2
    for _ in range(40):
        d = (lo + hi) / 2
        w, h = width - 2 * d, height - 2 * d
        grown = w * h * ratio / (2 * (w + h)) if w > 0 and h > 0 else 0.0
        lo, hi = (d, hi) if grown > d else (lo, d)
    return lo


def _substrate(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Something to print on: the generator's via frames, noise texture or a gradient."""
    from kensa_pipeline.data.generator import CLASSES, render

    kind = rng.random()
    if kind < 0.4:
        via, _, _ = render(str(rng.choice(CLASSES)), rng, 0.1)
        return Image.fromarray(via).resize((width, height), Image.Resampling.BILINEAR)
    if kind < 0.8:
        level = rng.uniform(20, 235)
        pixels = rng.normal(level, rng.uniform(2, 20), (height, width))
    else:
        ramp = np.linspace(rng.uniform(0, 255), rng.uniform(0, 255), width)
        pixels = np.tile(ramp, (height, 1)) + rng.normal(0, 4, (height, width))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@dataclass(frozen=True)
class Printed:
    """A line printed on a rendered frame: its text and glyph box (left, top, right, bottom)."""

    text: str
    box: tuple[int, int, int, int]


def render_frame(
    rng: np.random.Generator, width: int, height: int
) -> tuple[Image.Image, np.ndarray, list[Printed]]:
    """A frame with a block of 0 to 3 lines printed the way an AOI machine prints them (one
    font, one line step, optionally a band behind each line), its target map (each line's box
    shrunk so that DB's unclip grows it back) and the lines."""
    frame = _substrate(rng, width, height)
    draw = ImageDraw.Draw(frame)
    target = np.zeros((height, width), np.float32)
    count = int(rng.choice([0, 1, 2, 2, 3]))
    size = int(rng.integers(11, 27))
    font = ImageFont.load_default(size=size)
    step = int(size * rng.uniform(1.3, 1.6))
    x = int(rng.integers(0, max(1, width // 3)))
    y = int(rng.integers(0, max(1, height - step * count - 4)))
    back, ink = _levels(rng)
    band = rng.random() < 0.5
    printed: list[Printed] = []
    for k in range(count):
        text = random_line(rng)
        left, top, right, bottom = (
            int(v) for v in draw.textbbox((x, y + k * step), text, font=font)
        )
        if right + 2 > width or bottom + 2 > height:
            break
        if band:
            draw.rectangle((left - 3, top - 3, right + 3, bottom + 3), fill=back)
        draw.text((x, y + k * step), text, fill=ink, font=font)
        printed.append(Printed(text, (left, top, right, bottom)))
        box = (left - 2, top - 2, right + 2, bottom + 2)
        d = shrink_distance(box[2] - box[0], box[3] - box[1])
        x0, y0 = max(0, round(box[0] + d)), max(0, round(box[1] + d))
        x1, y1 = min(width, round(box[2] - d)), min(height, round(box[3] - d))
        target[y0:y1, x0:x1] = 1.0
    return _degrade(frame, rng), target, printed


def line_crops(rng: np.random.Generator, count: int) -> tuple[list[Image.Image], list[str]]:
    """``count`` printed lines cut from rendered frames the way the detector's boxes cut them:
    loose by a few pixels, most on the right, with the neighbouring lines' edges."""
    crops: list[Image.Image] = []
    texts: list[str] = []
    while len(crops) < count:
        frame, _, printed = render_frame(rng, 480, 128)
        for line in printed[: count - len(crops)]:
            left, top, right, bottom = line.box
            pad = rng.integers(0, 7, 4)
            cut = (
                max(0, left - int(pad[0])),
                max(0, top - int(pad[1])),
                min(frame.width, right + int(pad[2]) + int(rng.integers(0, 18))),
                min(frame.height, bottom + int(pad[3])),
            )
            crops.append(frame.crop(cut))
            texts.append(line.text)
    return crops, texts


def _frame_tensor(frames: list[Image.Image]) -> torch.Tensor:
    pixels = np.stack([np.asarray(f, dtype=np.float32) / 127.5 - 1.0 for f in frames])
    return torch.from_numpy(pixels)[:, None].expand(-1, 3, -1, -1).contiguous()


def _fit(
    net: nn.Module, steps: int, lr: float, name: str, batch_loss: Callable[[], torch.Tensor]
) -> list[dict[str, float]]:
    """AdamW with a one-cycle schedule over ``steps`` fresh batches; the loss log (every 100
    steps, printed as it goes). Leaves ``net`` in eval mode."""
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=steps)
    log: list[dict[str, float]] = []
    net.train()
    for step in range(steps):
        loss = batch_loss()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log.append({f"{name}_step": step, "loss": loss.item()})
            print(log[-1], flush=True)
    net.eval()
    return log


def train_recogniser(cfg: TrainConfig) -> tuple[LineRecogniser, list[dict[str, float]]]:
    """CTC on freshly rendered lines every step (no epoch: the renderer never repeats); the
    net and its loss log."""
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 1])
    net = LineRecogniser(len(CHARSET) + 2)
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)

    def batch_loss() -> torch.Tensor:
        crops, texts = line_crops(rng, cfg.recogniser_batch)
        logits = net(line_tensor(crops)).log_softmax(2).transpose(0, 1)
        targets = torch.tensor([i for t in texts for i in encode(t)])
        lengths = torch.tensor([len(t) for t in texts])
        steps = torch.full((len(texts),), logits.shape[0], dtype=torch.long)
        return ctc(logits, targets, steps, lengths)

    return net, _fit(net, cfg.recogniser_steps, 2e-3, "recogniser", batch_loss)


def train_detector(cfg: TrainConfig) -> tuple[LineDetector, list[dict[str, float]]]:
    """Binary cross-entropy plus dice on the shrunk boxes of freshly rendered frames; the net
    and its loss log."""
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed + 1)
    rng = np.random.default_rng([cfg.seed, 2])
    net = LineDetector()

    def batch_loss() -> torch.Tensor:
        side = cfg.detector_side
        pairs = [render_frame(rng, side, side) for _ in range(cfg.detector_batch)]
        x = _frame_tensor([p[0] for p in pairs])
        y = torch.from_numpy(np.stack([p[1] for p in pairs]))[:, None]
        logits = net(x)
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
        return F.binary_cross_entropy_with_logits(logits, y) + dice

    return net, _fit(net, cfg.detector_steps, 3e-3, "detector", batch_loss)


def export(detector: LineDetector, recogniser: LineRecogniser, out: Path) -> tuple[Path, Path]:
    """``detector.onnx`` and ``recogniser.onnx`` (opset 17, dynamic batch and sides), the
    recogniser's charset in its ``character`` metadata as PP-OCR's graphs carry it."""
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    det_path, rec_path = out / "detector.onnx", out / "recogniser.onnx"
    with torch.no_grad():
        torch.onnx.export(
            _Probabilities(detector, None).eval(),
            (torch.zeros(1, 3, 64, 96),),
            str(det_path),
            input_names=["x"],
            output_names=["maps"],
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "maps": {0: "n", 2: "h", 3: "w"}},
            opset_version=17,
            dynamo=False,
        )
        torch.onnx.export(
            _Probabilities(recogniser, 2).eval(),
            (torch.zeros(1, 3, LINE_HEIGHT, MIN_LINE_WIDTH),),
            str(rec_path),
            input_names=["x"],
            output_names=["softmax"],
            dynamic_axes={"x": {0: "n", 3: "w"}, "softmax": {0: "n", 1: "steps"}},
            opset_version=17,
            dynamo=False,
        )
    model = onnx.load(str(rec_path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "character", "\n".join(CHARSET)
    onnx.save(model, str(rec_path))
    return det_path, rec_path


def _timed(part: str, cfg: TrainConfig) -> tuple[nn.Module, list[dict[str, float]], float]:
    started = time.monotonic()
    net, log = train_recogniser(cfg) if part == "recogniser" else train_detector(cfg)
    return net, log, time.monotonic() - started


def train(out: Path, cfg: TrainConfig = TrainConfig()) -> dict[str, Any]:
    """Trains both graphs, one process and one core each, exports them into ``out`` with
    ``training.json``; returns that record."""
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        rec_job = pool.submit(_timed, "recogniser", cfg)
        det_job = pool.submit(_timed, "detector", cfg)
        recogniser, rec_log, rec_s = rec_job.result()
        detector, det_log, det_s = det_job.result()
    assert isinstance(recogniser, LineRecogniser) and isinstance(detector, LineDetector)
    det_path, rec_path = export(detector, recogniser, out)
    record = {
        "config": asdict(cfg),
        "charset": CHARSET,
        "torch": torch.__version__,
        "recogniser_s": round(rec_s, 1),
        "detector_s": round(det_s, 1),
        "files": {p.name: p.stat().st_size for p in (det_path, rec_path)},
        "log": rec_log + det_log,
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main() -> None:
    """Command line: --out, and the steps and seed of :class:`TrainConfig`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    args = parser.parse_args()
    cfg = TrainConfig(**{k: getattr(args, k) for k in asdict(defaults)})
    record = train(args.out, cfg)
    print(json.dumps({k: v for k, v in record.items() if k != "log"}, indent=1))


if __name__ == "__main__":
    main()
