"""Synthetic ASE-like AOI dataset: laser-drilled vias on a substrate, with machine notes.

Every sample is a grayscale 128x128 AOI review crop of a substrate carrying a grid of
drilled vias (dark hole inside a brighter copper pad ring, 64 px pitch, zoomed on the flagged via), centred (up to the
placement error) on the via the machine flagged and measured; that via carries the defect,
if any. Classes and ASE proportions
(225 / 92 / 44 / 50 / 44 per 455 samples):

========== ============================================== =====================================
class      image signature (subtle, strength varies)      note signal
========== ============================================== =====================================
normal     none (dust specks; 15% carry a dust film that  nominal measurements
           looks exactly like residue)
void       small dark pocket inside the flagged hole      depth reads deep (laser), remarks
oversize   flagged hole drilled a bit larger              diameter reads large
offset     flagged hole shifted inside its pad            offset reads large
residue    smudge on the substrate near the via           measurements nominal; GRAY call
========== ============================================== =====================================

Nuisance variation everywhere: grain noise, defocus blur, illumination gradient and gain,
grid misalignment (shift + small rotation), via size/pad jitter, dust specks (look like
voids/residue), texture. Signatures are drawn with random strength, so part of each
defect class is nearly invisible and classes overlap for the image alone.

The note is what the AOI machine and the operator attach: lot, strip, unit position,
measurements of the flagged via (diameter, depth, offset in µm), the machine's rule-based
call codes (thresholds on those measurements + a gray-level detector on the substrate around
the via, which fires on 90% of residue and, on dust, on 2% of other units) and a short
operator remark. The
measurements overlap between classes (measurement noise); the remark is informative only
part of the time and sometimes misleading; some notes are empty; some are wrong (they
belong to another unit).

Everything is driven by one seed: the same (seed, scale) gives byte-identical output.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from kensa_pipeline.overlay import OverlayStyle, draw_overlay, overlay_lines

CLASSES = ["normal", "void", "oversize", "offset", "residue"]
ASE_COUNTS = {"normal": 225, "void": 92, "oversize": 44, "offset": 50, "residue": 44}
DISPLAY = {
    "normal": "Normal",
    "void": "Void in via",
    "oversize": "Oversize via",
    "offset": "Offset via",
    "residue": "Residue",
}
IMAGE_SIZE = 128
GRID = 4
PITCH = 64.0
Z = (
    PITCH / 40.0
)  # zoom relative to the 64 px pitch, zoomed on the flagged via the defect sizes were tuned at
UM_PER_PX = 2.7 / Z

REMARKS = {
    "normal": ["ok", "pass", "looks fine", "no defect seen", "nominal", "cosmetic only"],
    "void": ["dark spot in hole", "possible void", "hole bottom dark", "void suspected"],
    "oversize": ["hole looks big", "drill wide", "diameter high", "large hole"],
    "offset": ["hole off center", "misregistration", "pad ring uneven", "drill shifted"],
    "residue": ["stain near via", "residue on surface", "smudge seen", "contamination"],
}
GENERIC = ["check", "re-inspect", "operator review", "flagged by aoi", "see image", ""]


@dataclass(frozen=True)
class GenConfig:
    """Knobs of the generator (defaults are the shipped demo's)."""

    seed: int = 0
    scale: float = 1.0  # 1.0 = 455 samples in ASE proportions
    p_empty: float = 0.06  # note left empty
    p_wrong: float = 0.03  # note of another unit (other class)
    p_remark_true: float = 0.5  # remark names the right class
    p_remark_misleading: float = 0.1  # remark names another class
    p_dust_film: float = 0.15  # non-residue unit with a dust film that looks like residue
    # Share of frames with the machine's text overlay burnt in (unit id, measurements, calls;
    # kensa_pipeline.overlay). 0 keeps the frames byte-identical to earlier versions; above 0
    # every frame is saved at overlay_frame_scale x its size (a saved AOI frame, not the
    # review crop) so the text is legible, and the record gets the printed lines as "overlay".
    overlay_share: float = 0.0
    overlay_frame_scale: int = 3


def class_counts(scale: float) -> dict[str, int]:
    """Per-class counts in ASE proportions for a given scale (at least 2 per class)."""
    return {c: max(2, int(round(n * scale))) for c, n in ASE_COUNTS.items()}


def _smooth(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency texture: random grid upsampled bicubically, ~N(0,1)."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    im = Image.fromarray(small, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.float32)
    return arr / (arr.std() + 1e-6)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable gaussian blur (reflect padding)."""
    if sigma < 0.2:
        return img
    r = int(math.ceil(3 * sigma))
    x = np.arange(-r, r + 1, dtype=np.float32)
    k = np.exp(-(x**2) / (2 * sigma**2))
    k /= k.sum()
    p = np.pad(img, r, mode="reflect")
    tmp = np.zeros_like(p[r:-r, :])
    for i, w in enumerate(k):
        tmp += w * p[i : i + img.shape[0], :]
    out = np.zeros_like(img)
    for i, w in enumerate(k):
        out += w * tmp[:, i : i + img.shape[1]]
    return out


def _soft_disc(d: np.ndarray, radius: float, edge: float = 0.8) -> np.ndarray:
    """1 inside radius, 0 outside, smooth edge of ~edge px."""
    return np.clip((radius - d) / edge + 0.5, 0.0, 1.0)


def _via(
    img: np.ndarray,
    xx: np.ndarray,
    yy: np.ndarray,
    label: str,
    rng: np.random.Generator,
    geom: dict[str, float],
    gx: int,
    gy: int,
    ox: float,
    oy: float,
    theta: float,
    r_hole: float,
    r_pad: float,
    strength: float,
    region: list[list[float]],
) -> None:
    """Draw one via (pad ring + hole) in place; the centre via carries the defect, whose
    region (discs [x, y, r] in pixels) is appended to ``region``."""
    px, py = gx * PITCH, gy * PITCH
    cx = ox + px * math.cos(theta) - py * math.sin(theta)
    cy = oy + px * math.sin(theta) + py * math.cos(theta)
    if not (-r_pad - 4 < cx < IMAGE_SIZE + r_pad + 4 and -r_pad - 4 < cy < IMAGE_SIZE + r_pad + 4):
        return
    flagged = gx == 0 and gy == 0
    rh = r_hole * rng.uniform(0.97, 1.03)
    hx, hy = cx + rng.normal(0, 0.25), cy + rng.normal(0, 0.25)
    if flagged and label == "oversize":
        rh *= 1.10 + 0.22 * strength
        geom["r_hole"] = rh
    if flagged and label == "offset":
        a = rng.uniform(0, 2 * math.pi)
        m = (2.0 + 3.5 * strength) * Z
        hx, hy = hx + m * math.cos(a), hy + m * math.sin(a)
        geom["shift"] = m
    if flagged and label in ("oversize", "offset"):
        region.append([float(hx), float(hy), float(rh)])
    d_pad = np.hypot(xx - cx, yy - cy)
    d_hole = np.hypot(xx - hx, yy - hy)
    pad = _soft_disc(d_pad, r_pad, 1.2)
    hole = _soft_disc(d_hole, rh, 0.9)
    img += 0.17 * pad  # copper pad is brighter
    img -= (0.17 + 0.22) * hole  # hole is dark
    img += 0.06 * np.exp(-(d_hole**2) / (2 * (rh * 0.35) ** 2)) * hole  # bottom glint
    if flagged and label == "void":
        a = rng.uniform(0, 2 * math.pi)
        rr = rng.uniform(0, rh * 0.45)
        vx, vy = hx + rr * math.cos(a), hy + rr * math.sin(a)
        vr = rng.uniform(2.8, 4.2) * Z
        amp = 0.12 + 0.20 * strength
        img -= amp * np.exp(-((xx - vx) ** 2 + (yy - vy) ** 2) / (2 * vr**2))
        geom["void"] = strength
        region.append([float(vx), float(vy), float(2 * vr)])


def _smudge(
    img: np.ndarray,
    xx: np.ndarray,
    yy: np.ndarray,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    r_pad: float,
    strength: float,
) -> list[list[float]]:
    """Draw a smudge of 2-4 overlapping dark blobs on the substrate next to the via at
    (cx, cy): residue, or a loose dust film that looks the same under top light. Returns the
    blobs as discs [x, y, 2 sigma]."""
    a = rng.uniform(0, 2 * math.pi)
    dist = r_pad + rng.uniform(2, 6) * Z
    sx, sy = cx + dist * math.cos(a), cy + dist * math.sin(a)
    amp = 0.09 + 0.12 * strength
    blobs = []
    for _ in range(int(rng.integers(2, 5))):
        bx, by = sx + rng.normal(0, 2.5 * Z), sy + rng.normal(0, 2.5 * Z)
        br = rng.uniform(2.5, 5.0) * Z
        img -= amp * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * br**2))
        blobs.append([float(bx), float(by), float(2 * br)])
    return blobs


def render(
    label: str, rng: np.random.Generator, p_dust_film: float
) -> tuple[np.ndarray, dict[str, float], list[list[float]]]:
    """Render one image (uint8 HxW), the true geometry of its flagged via and the defect's
    region: discs [x, y, r] in pixels (x = column, y = row; empty for a normal unit). Void:
    the dark pocket (r = 2 sigma); oversize and offset: the flagged hole; residue: its blobs."""
    s = IMAGE_SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    base = rng.uniform(0.42, 0.58)
    img = np.full((s, s), base, dtype=np.float32)
    img += 0.025 * _smooth(rng, s, 6) + 0.012 * _smooth(rng, s, 24)  # substrate texture
    # The AOI review crop is centred on the flagged via (placement error = misalignment:
    # shift + small rotation); neighbouring vias of the 64 px pitch, zoomed on the flagged via grid fill the frame.
    theta = math.radians(rng.uniform(-2.5, 2.5))
    ox, oy = rng.uniform(-6, 6, size=2) + s / 2
    r_hole = rng.uniform(10.5, 11.5) * Z
    r_pad = r_hole + rng.uniform(3.2, 4.2) * Z
    strength = float(rng.uniform(0.2, 1.0)) if label != "normal" else 0.0
    geom = {"r_hole": r_hole, "shift": 0.0, "void": 0.0, "flag": float(rng.integers(GRID * GRID))}
    region: list[list[float]] = []
    for gy in range(-1, 2):
        for gx in range(-1, 2):
            _via(
                img,
                xx,
                yy,
                label,
                rng,
                geom,
                gx,
                gy,
                ox,
                oy,
                theta,
                r_hole,
                r_pad,
                strength,
                region,
            )
    # Residue, or on any other unit a loose dust film that looks just like it in this
    # top-light image: only the machine's gray-level detector tells them apart.
    if label == "residue":
        region += _smudge(img, xx, yy, rng, ox, oy, r_pad, strength)
    elif rng.random() < p_dust_film:
        _smudge(img, xx, yy, rng, ox, oy, r_pad, float(rng.uniform(0.2, 1.0)))
    # Nuisance dust specks (any class): small dark or bright dots.
    for _ in range(int(rng.poisson(0.8))):
        bx, by = rng.uniform(0, s, size=2)
        br = rng.uniform(0.8, 2.0)
        amp = rng.uniform(0.04, 0.12) * (1 if rng.random() < 0.7 else -1)
        img -= amp * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * br**2))
    # Illumination: gradient + gain + offset.
    ga = rng.uniform(0, 2 * math.pi)
    grad = ((xx - s / 2) * math.cos(ga) + (yy - s / 2) * math.sin(ga)) / s
    img = img * rng.uniform(0.8, 1.2) * (1 + rng.uniform(0.0, 0.35) * grad)
    img += rng.uniform(-0.06, 0.06)
    img = _blur(img, float(rng.uniform(0.3, 1.3)))
    img += rng.normal(0, rng.uniform(0.008, 0.03), size=img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), geom, region


def _measurements(label: str, geom: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
    dia = 2 * geom["r_hole"] * UM_PER_PX + rng.normal(0, 1.8)
    depth = rng.normal(35.0, 2.2) + (rng.uniform(4, 10) if label == "void" else 0.0)
    offset = abs(geom["shift"] * UM_PER_PX + rng.normal(0, 1.5))
    return {"dia": round(dia, 1), "depth": round(depth, 1), "offset": round(offset, 1)}


def _machine_calls(label: str, m: dict[str, float], rng: np.random.Generator) -> list[str]:
    """The AOI machine's rule-based call codes: thresholds on its own (noisy) measurements
    plus a gray-level detector on the substrate, which also fires on dust (false calls)."""
    calls = []
    if m["dia"] > 63.5:
        calls.append("DIA_HI")
    if m["depth"] > 39.5:
        calls.append("DEPTH_HI")
    if m["offset"] > 4.5:
        calls.append("OFS_HI")
    p_gray = 0.9 if label == "residue" else 0.02
    if rng.random() < p_gray:
        calls.append("GRAY")
    return calls or ["NONE"]


def _remark(label: str, rng: np.random.Generator, cfg: GenConfig) -> str:
    u = rng.random()
    if u < cfg.p_remark_true:
        return str(rng.choice(REMARKS[label]))
    if u < cfg.p_remark_true + cfg.p_remark_misleading:
        other = [c for c in CLASSES if c != label]
        return str(rng.choice(REMARKS[str(rng.choice(other))]))
    return str(rng.choice(GENERIC))


def format_note(
    label: str, geom: dict[str, float], rng: np.random.Generator, cfg: GenConfig
) -> str:
    """Machine/operator note of one unit (lot, strip, position, measurements, remark)."""
    return describe_unit(label, geom, rng, cfg)[0]


def describe_unit(
    label: str, geom: dict[str, float], rng: np.random.Generator, cfg: GenConfig
) -> tuple[str, list[str]]:
    """The note of one unit and the overlay lines its AOI machine prints into the frame (the
    same lot, position, measurements and calls; no operator remark). Draws from ``rng``
    exactly as the note alone always did."""
    m = _measurements(label, geom, rng)
    lot = f"L{rng.integers(2401, 2452)}-{rng.integers(1, 20):02d}"
    strip = int(rng.integers(1, 25))
    flag = int(geom["flag"])
    pos = f"R{rng.integers(1, 9)}C{rng.integers(1, 13):02d}"
    unit_via = f"via {flag // GRID + 1}-{flag % GRID + 1}"
    unit = "µm" if rng.random() < 0.5 else "um"
    meas = [f"dia {m['dia']}{unit}", f"depth {m['depth']}{unit}", f"offset {m['offset']}{unit}"]
    if rng.random() < 0.3:
        rng.shuffle(meas)
    remark = _remark(label, rng, cfg)
    calls = _machine_calls(label, m, rng)
    parts = [f"lot {lot} strip {strip} unit {pos} {unit_via}", ", ".join(meas)]
    parts.append("aoi call: " + " ".join(calls))
    if remark:
        parts.append(f"remark: {remark}")
    lines = overlay_lines(lot, pos, m["dia"], m["depth"], m["offset"], calls)
    return "; ".join(parts), lines


def _burn_overlay(
    img: np.ndarray, lines: list[str], cfg: GenConfig, seed: int, i: int
) -> tuple[np.ndarray, list[str] | None]:
    """The frame as saved: enlarged, and for ``overlay_share`` of the units with the overlay
    printed in a random corner, size and degradation (its own random stream)."""
    orng = np.random.default_rng([seed, i, 0x0C12])
    size = img.shape[0] * cfg.overlay_frame_scale
    frame = Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR)
    if orng.random() >= cfg.overlay_share:
        return np.asarray(frame), None
    style = OverlayStyle(
        font_size=int(orng.integers(15, 19)),
        corner=str(orng.choice(["top-left", "bottom-left"])),
        text_level=255,
        band_level=None if orng.random() < 0.5 else int(orng.integers(0, 40)),
        noise_sigma=float(orng.uniform(0.0, 6.0)),
        blur_radius=float(orng.uniform(0.0, 0.7)),
    )
    out = draw_overlay(frame, lines, style, seed=int(orng.integers(1 << 31)))
    return np.asarray(out), lines


def generate(out_dir: str | Path, cfg: GenConfig = GenConfig()) -> Path:
    """Write ``images/*.png`` and ``data.jsonl`` (image, note, label) into ``out_dir``.

    Returns the JSONL path. Sample order is shuffled (seeded).
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    labels = [c for c, n in class_counts(cfg.scale).items() for _ in range(n)]
    order = rng.permutation(len(labels))
    records: list[dict[str, object]] = []
    notes_pool: list[tuple[str, str]] = []
    for i, j in enumerate(order):
        label = labels[int(j)]
        srng = np.random.default_rng([cfg.seed, i])
        img, geom, region = render(label, srng, cfg.p_dust_film)
        note, lines = describe_unit(label, geom, srng, cfg)
        name = f"images/{i:05d}.png"
        printed = None
        if cfg.overlay_share > 0:
            img, printed = _burn_overlay(img, lines, cfg, cfg.seed, i)
        Image.fromarray(img, mode="L").save(out / name, optimize=False)
        rec: dict[str, object] = {"image": name, "note": note, "label": label}
        if printed is not None:
            rec["overlay"] = printed
        if region:
            scale = cfg.overlay_frame_scale if cfg.overlay_share > 0 else 1
            rec["region"] = [[round(v * scale, 2) for v in disc] for disc in region]
        records.append(rec)
        notes_pool.append((label, note))
    # Corrupt notes: empty, or wrong (taken from a unit of another class).
    crng = np.random.default_rng([cfg.seed, 10_000_019])
    for rec in records:
        u = crng.random()
        if u < cfg.p_empty:
            rec["note"] = ""
        elif u < cfg.p_empty + cfg.p_wrong:
            others = [n for lab, n in notes_pool if lab != rec["label"]]
            rec["note"] = others[int(crng.integers(len(others)))]
    path = out / "data.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    (out / "labels.json").write_text(
        json.dumps(
            [{"name": c, "display_name": DISPLAY[c], "is_normal": c == "normal"} for c in CLASSES],
            indent=2,
        )
    )
    return path
