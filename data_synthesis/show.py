"""`data_synthesis show DIR`: a contact sheet of pairs (perfect | perturbed) with their prompts, the broken
relations marked in red, because people would rather look than read."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from data_synthesis.relations import Relation
from data_synthesis.verify import load_pairs

TILE = 192  # pixels per image in the sheet
TEXT_WIDTH = 2 * TILE + 8


def _describe_relation(relation: Relation) -> str:
    words = relation.kind.replace("_", " ")
    subjects = relation.subjects
    if relation.region:
        return f"{subjects[0]} {words}: {relation.region}"
    if len(subjects) == 3:
        return f"{subjects[0]} {words} {subjects[1]} and {subjects[2]}"
    return " ".join([subjects[0], words, *subjects[1:]])


def contact_sheet(
    dataset_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    num: int = 16,
    split: str | None = None,
    columns: int = 4,
) -> Path:
    """Write a PNG with `num` pairs (the first ones of `split`, or of the whole dataset)."""
    dataset_dir, out_path = Path(dataset_dir), Path(out_path)
    _, frame = load_pairs(dataset_dir)
    if split is not None:
        frame = frame[frame["split"] == split]
    rows = frame.head(num).to_dict("records")
    if not rows:
        raise ValueError(f"{dataset_dir} has no pairs" + (f" in split {split!r}" if split else ""))
    font = ImageFont.load_default(size=12)
    cell_w = TEXT_WIDTH + 16
    line_height = 15
    char_width = 6.2
    cells = []
    for row in rows:
        stated = [Relation.from_dict(r) for r in json.loads(row["stated_relations"])]
        broken = set(json.loads(row["broken_relations"]))
        prompt_lines = textwrap.wrap(row["prompt"], int(TEXT_WIDTH / char_width))
        relation_lines = [
            (f"{'BROKEN ' if i in broken else 'kept   '}{_describe_relation(r)}", i in broken)
            for i, r in enumerate(stated)
        ]
        height = TILE + 24 + line_height * (len(prompt_lines) + len(relation_lines) + 1)
        cell = Image.new("RGB", (cell_w, height), "white")
        draw = ImageDraw.Draw(cell)
        for offset, column, label in ((8, "perfect_image", "perfect"), (16 + TILE, "perturbed_image", "perturbed")):
            with Image.open(dataset_dir / row[column]) as image:
                cell.paste(image.convert("RGB").resize((TILE, TILE), Image.Resampling.NEAREST), (offset, 20))
            draw.text((offset, 4), f"{label}  {row['pair_id']}", fill="black", font=font)
        y = TILE + 26
        for line in prompt_lines:
            draw.text((8, y), line, fill="black", font=font)
            y += line_height
        y += line_height // 2
        for line, is_broken in relation_lines:
            draw.text((8, y), line, fill=(200, 0, 0) if is_broken else (90, 90, 90), font=font)
            y += line_height
        cells.append(cell)
    columns = max(1, min(columns, len(cells)))
    grid_rows = [cells[i : i + columns] for i in range(0, len(cells), columns)]
    row_heights = [max(c.height for c in r) for r in grid_rows]
    sheet = Image.new("RGB", (columns * cell_w, sum(row_heights)), (235, 235, 235))
    y = 0
    for grid_row, height in zip(grid_rows, row_heights, strict=True):
        for i, cell in enumerate(grid_row):
            sheet.paste(cell, (i * cell_w, y))
        y += height
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path)
    return out_path
