"""A job's annotations drawn on its image, for people: boxes, polygon masks, keypoints and
their labels, and a footer saying whose annotations they are.

The image keeps its own pixel grid (no resizing, origin top-left), so every shape is drawn
where its COCO coordinates say; the footer is a strip added below the image. A model that was
never trained is named in the footer in red: such a picture must not pass for a reading.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

from shared.schemas.results import ResultDocument

if TYPE_CHECKING:
    from services.reviews import CorrectedAnnotations

# Okabe-Ito, the colour-blind-safe set, then Tableau's.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
    (204, 121, 167), (255, 255, 255), (148, 103, 189), (140, 86, 75), (227, 119, 194), (188, 189, 34),
)
MASK_ALPHA = 80  # of 255: the anatomy under a mask stays readable
FOOTER_TEXT = (235, 235, 235)
FOOTER_WARNING = (255, 90, 90)
FOOTER_BACKGROUND = (20, 20, 20)


@dataclass(frozen=True)
class Shape:
    """One annotated structure in COCO geometry: a box, polygons and/or keypoints [x, y, v, ...]."""

    label: str
    bbox: tuple[float, float, float, float]
    polygons: Sequence[Sequence[float]] = ()
    keypoints: Sequence[float] = ()
    score: float | None = None


@dataclass(frozen=True)
class Footer:
    """What the strip below the image says: whose annotations, and whether the model was trained."""

    lines: Sequence[str]
    warning: str | None = None  # the last line, in red


def shapes_of_result(document: ResultDocument) -> list[Shape]:
    """The model's detections, masks and keypoints (a segmented structure is drawn as its mask,
    not again as a box)."""
    shapes = [Shape(d.label, d.bbox, score=d.score) for d in document.detections]
    shapes += [Shape(s.label, s.bbox, polygons=s.segmentation, score=s.score) for s in document.segmentations]
    shapes += [Shape(k.label, k.bbox, keypoints=k.keypoints) for k in document.keypoints]
    return shapes


def shapes_of_corrections(annotations: Iterable[dict[str, Any]]) -> list[Shape]:
    """A reviewer's corrected annotations (``corrections.annotations``, checked at review time)."""
    return [Shape(str(a["label"]), tuple(a["bbox"]),
                  polygons=a.get("segmentation") or (), keypoints=a.get("keypoints") or ())
            for a in annotations]


def colours_of(labels: Iterable[str], classes: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """A colour per class in the picture, distinct while there are no more classes than colours:
    handed out in the profile's class order, so the same classes get the same colours."""
    order = sorted(set(labels), key=lambda label: (classes.index(label) if label in classes else len(classes), label))
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(order)}


def draw_overlay(image: Image.Image, shapes: Sequence[Shape], *, classes: Sequence[str], footer: Footer) -> Image.Image:
    """A new RGB picture: ``image`` with ``shapes`` drawn on it and ``footer`` below."""
    base = image.convert("RGBA")
    width, height = base.size
    line = max(1, round(min(width, height) / 250))
    font = ImageFont.load_default(size=max(10, min(22, round(width / 45))))

    colours = colours_of((shape.label for shape in shapes), classes)
    masks = Image.new("RGBA", base.size, (0, 0, 0, 0))
    fill = ImageDraw.Draw(masks)
    for shape in shapes:
        for polygon in shape.polygons:
            if len(polygon) >= 6:
                fill.polygon(_points(polygon), fill=(*colours[shape.label], MASK_ALPHA))
    picture = Image.alpha_composite(base, masks).convert("RGB")

    pen = ImageDraw.Draw(picture)
    for shape in shapes:
        colour = colours[shape.label]
        if shape.polygons:
            for polygon in shape.polygons:
                if len(polygon) >= 4:
                    pen.line([*_points(polygon), _points(polygon)[0]], fill=colour, width=line)
        elif not shape.keypoints:
            x, y, w, h = shape.bbox
            pen.rectangle([x, y, x + w, y + h], outline=colour, width=line)
        _draw_keypoints(pen, shape.keypoints, colour, radius=line + 2)
        _draw_label(pen, shape, colour, font, width)
    return _with_footer(picture, footer, font)


# zlib level 1: drawn on demand for a person waiting. Against PIL's default level 6
# (bench/overlay_render.py): a speckled 1024x768 frame re-encodes in 55 ms instead of 246, in
# fewer bytes; pydicom's real obstetric scan in 6.8 ms instead of 10.3, in 30 KiB instead of 23.
PNG_COMPRESS_LEVEL = 1


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


def _points(flat: Sequence[float]) -> list[tuple[float, float]]:
    return [(float(flat[i]), float(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]


def _draw_keypoints(pen: ImageDraw.ImageDraw, flat: Sequence[float], colour: tuple[int, int, int], *,
                    radius: int) -> None:
    """COCO visibility: 2 visible (filled), 1 labelled but hidden (ring), 0 not labelled (not drawn)."""
    for i in range(0, len(flat) - 2, 3):
        x, y, v = float(flat[i]), float(flat[i + 1]), int(flat[i + 2])
        if v == 0:
            continue
        box = [x - radius, y - radius, x + radius, y + radius]
        pen.ellipse(box, fill=colour if v == 2 else None, outline=colour, width=max(1, radius // 2))


def _draw_label(pen: ImageDraw.ImageDraw, shape: Shape, colour: tuple[int, int, int],
                font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> None:
    """The class (and score) on a tab of the class's colour, above the box where there is room."""
    text = shape.label if shape.score is None else f"{shape.label} {shape.score:.2f}"
    left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
    tab_w, tab_h = right - left + 4, bottom - top + 4
    x, y = shape.bbox[0], shape.bbox[1]
    x = min(max(0.0, x), max(0.0, width - tab_w))
    y = y - tab_h if y >= tab_h else y
    pen.rectangle([x, y, x + tab_w, y + tab_h], fill=colour)
    pen.text((x + 2 - left, y + 2 - top), text, fill=(0, 0, 0), font=font)


def _with_footer(picture: Image.Image, footer: Footer,
                 font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> Image.Image:
    measure = ImageDraw.Draw(picture)
    fits = picture.width - 8
    lines = [(part, FOOTER_TEXT) for text in footer.lines for part in _wrap(measure, text, font, fits)]
    if footer.warning:
        lines += [(part, FOOTER_WARNING) for part in _wrap(measure, footer.warning, font, fits)]
    line_h = int(max(measure.textbbox((0, 0), "Ag", font=font)[3], 1)) + 4
    framed = Image.new("RGB", (picture.width, picture.height + line_h * len(lines) + 4), FOOTER_BACKGROUND)
    framed.paste(picture, (0, 0))
    pen = ImageDraw.Draw(framed)
    for n, (text, colour) in enumerate(lines):
        pen.text((4, picture.height + 2 + n * line_h), text, fill=colour, font=font)
    return framed


def _wrap(pen: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
          width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` (a word longer than that stands alone): a
    small image still shows its whole footer."""
    lines: list[str] = []
    for word in text.split(" "):
        joined = f"{lines[-1]} {word}" if lines else word
        if lines and pen.textlength(joined, font=font) <= width:
            lines[-1] = joined
        else:
            lines.append(word)
    return lines


def result_overlay(png: bytes, document: ResultDocument, *, job_id: str, classes: Sequence[str],
                   reviewed: CorrectedAnnotations | None = None) -> bytes:
    """The job's stored image with the model's annotations (or a reviewer's) as a PNG."""
    model = document.model
    if reviewed is None:
        shapes, whose = shapes_of_result(document), f"annotations: model {model.revision} ({model.profile})"
    else:
        shapes = shapes_of_corrections(reviewed.annotations)
        whose = (f"annotations: review {reviewed.review_id} by {reviewed.reviewer} "
                 f"(score {reviewed.score}, {reviewed.decision}) of model {model.revision}")
    image = document.image
    footer = Footer(
        lines=[f"job {job_id} | frame {image.frame} | {image.width}x{image.height} px", whose],
        warning="UNTRAINED MODEL (random weights): not a clinical reading" if model.untrained else None)
    with Image.open(io.BytesIO(png)) as stored:
        return png_bytes(draw_overlay(stored, shapes, classes=classes, footer=footer))
