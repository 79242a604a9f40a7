"""OCR on the synthetic overlays: the reader's character error rate, and three copies of the
dataset that differ only in the note, to train on the same split and seed.

* ``station/`` - the station's note as generated (sometimes empty or another unit's).
* ``ocr/`` - the text read on the frame (rapidocr, which the service's reader matches: see
  ``tests/fixtures/ocr``), as a station that sends bare frames would get it.
* ``image/`` - no note.

    python -m kensa_pipeline.ocr_eval --data DATA --out OUT [--reader overlay]

``--reader`` picks the graphs (:data:`kensa_pipeline.ocr_fixtures.READERS`): the wheel's
PP-OCRv4 (default) or the overlay-font reader in ``models/ocr-overlay``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from PIL import Image

from kensa_pipeline.ocr_fixtures import READERS, reference_read


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def cer(printed: list[str], read: str) -> tuple[int, int, int, int]:
    """Errors and characters, with spaces and without (the recogniser drops narrow spaces)."""
    truth = "\n".join(printed)
    bare_truth = truth.replace(" ", "").replace("\n", "")
    bare_read = read.replace(" ", "").replace("\n", "")
    return (
        edit_distance(truth, read),
        len(truth),
        edit_distance(bare_truth, bare_read),
        len(bare_truth),
    )


def run(data: Path, out: Path, reader: str = "pp-ocrv4") -> dict[str, Any]:
    """Reads every overlaid frame of ``data`` with ``reader``, writes the three variants,
    returns the CER."""
    rows = [json.loads(x) for x in (data / "data.jsonl").read_text().splitlines() if x.strip()]
    errors = chars = bare_errors = bare_chars = read_count = 0
    notes: list[str] = []
    for row in rows:
        text = ""
        if "overlay" in row:
            lines = reference_read(Image.open(data / row["image"]), reader)
            text = "\n".join(line["text"] for line in lines)
            e, n, be, bn = cer(row["overlay"], text)
            errors, chars, bare_errors, bare_chars = (
                errors + e,
                chars + n,
                bare_errors + be,
                bare_chars + bn,
            )
            read_count += 1
        notes.append(text)
    for variant in ("station", "ocr", "image"):
        folder = out / variant
        folder.mkdir(parents=True, exist_ok=True)
        images = folder / "images"
        if not images.exists():
            images.symlink_to((data / "images").resolve())
        shutil.copy(data / "labels.json", folder / "labels.json")
        with (folder / "data.jsonl").open("w", encoding="utf-8") as f:
            for row, text in zip(rows, notes, strict=True):
                note = {"station": row["note"], "ocr": text, "image": ""}[variant]
                f.write(json.dumps({**row, "note": note}, ensure_ascii=False) + "\n")
    result = {
        "reader": reader,
        "frames_read": read_count,
        "cer": errors / max(chars, 1),
        "cer_without_spaces": bare_errors / max(bare_chars, 1),
        "characters": chars,
    }
    (out / "ocr_cer.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    """Command line: --data (a generated dataset with overlays), --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reader", choices=sorted(READERS), default="pp-ocrv4")
    args = parser.parse_args()
    print(json.dumps(run(args.data, args.out, args.reader), indent=2))


if __name__ == "__main__":
    main()
