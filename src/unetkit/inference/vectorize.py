"""Label maps as vectors: component polygons (GeoJSON) and COCO run-length encodings.

Pure numpy/scipy/scikit-image; no GDAL, no pycocotools. Used by `unetkit predict --geojson/--coco`
and by the server's JSON responses, so a mask is encoded one way everywhere.

Polygons
--------
`label_polygons(labels)` traces every connected component (8-connectivity) of every class. The
coordinates are pixel units with the origin at the top-left CORNER of the image: pixel (row r,
col c) covers x in [c, c+1], y in [r, r+1]; x runs along columns, y along rows. A ring runs
through the mid-points between inside and outside pixels (marching squares at level 0.5), so the
pixels whose centres lie inside the polygon (minus its holes) are exactly the component:
`polygons_to_mask` gives the mask back. An optional `GeoTransform` (read from a GeoTIFF's
ModelPixelScale/ModelTiepoint or ModelTransformation tags) maps them to map coordinates.

COCO RLE
--------
`coco_annotations(labels)`: one RLE annotation per class (or component), encoded by
`unetkit.data.rle` (`mask_to_rle`, `compress_rle`), the one owner of the RLE formats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from unetkit.data.rle import compress_rle, mask_to_rle

EIGHT = np.ones((3, 3), bool)

def coco_annotations(
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    image_id: int = 1,
    first_id: int = 1,
    background: int | None = 0,
    instances: bool = False,
    compressed: bool = True,
) -> list[dict[str, Any]]:
    """COCO annotations of a label map: one per present class (or per component with `instances`).

    `category_id` is the class index; `bbox` is [x, y, width, height] in pixels; `iscrowd` is 0.
    """
    anns: list[dict[str, Any]] = []
    for cls, mask in _class_masks(labels, len(class_names), background):
        parts = [mask] if not instances else [_full(mask.shape, off, crop) for off, crop in _components(mask)]
        for part in parts:
            rle = mask_to_rle(part)
            rows, cols = np.nonzero(part)
            anns.append({
                "id": first_id + len(anns),
                "image_id": image_id,
                "category_id": cls,
                "segmentation": compress_rle(rle) if compressed else rle,
                "area": int(rows.size),
                "bbox": [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)],
                "iscrowd": 0,
            })
    return anns


def coco_categories(class_names: Sequence[str], background: int | None = 0) -> list[dict[str, Any]]:
    return [{"id": i, "name": n} for i, n in enumerate(class_names) if i != background]


# ---------------------------------------------------------------- polygons


@dataclass(frozen=True)
class GeoTransform:
    """GDAL-style affine: X = x0 + col*dx + row*rx, Y = y0 + col*ry + row*dy (pixel corner origin)."""

    x0: float = 0.0
    dx: float = 1.0
    rx: float = 0.0
    y0: float = 0.0
    ry: float = 0.0
    dy: float = 1.0
    epsg: int | None = None

    def apply(self, xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.stack([self.x0 + x * self.dx + y * self.rx, self.y0 + x * self.ry + y * self.dy], axis=1)

    @property
    def flips(self) -> bool:
        """True when the transform mirrors (north-up rasters: dy < 0), reversing ring orientation."""
        return self.dx * self.dy - self.rx * self.ry < 0


def read_geotransform(path: str | Path) -> GeoTransform | None:
    """The affine of a GeoTIFF from its ModelTransformation or ModelPixelScale + ModelTiepoint tags.

    None for files without them (plain TIFF, PNG...). PixelIsPoint rasters are shifted by half a
    pixel so that the transform, like GDAL's, refers to pixel corners.
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        matrix = tags.get("ModelTransformationTag")
        scale = tags.get("ModelPixelScaleTag")
        tie = tags.get("ModelTiepointTag")
        keys = tags.get("GeoKeyDirectoryTag")
        geokeys = _geokeys(keys.value) if keys is not None else {}
        if matrix is not None:
            m = [float(v) for v in matrix.value]
            gt = GeoTransform(m[3], m[0], m[1], m[7], m[4], m[5])
        elif scale is not None and tie is not None:
            sx, sy = float(scale.value[0]), float(scale.value[1])
            i, j, _, x, y = (float(v) for v in tie.value[:5])
            gt = GeoTransform(x - i * sx, sx, 0.0, y + j * sy, 0.0, -sy)
        else:
            return None
    if geokeys.get(1025) == 2:  # GTRasterTypeGeoKey = RasterPixelIsPoint
        gt = GeoTransform(gt.x0 - 0.5 * (gt.dx + gt.rx), gt.dx, gt.rx, gt.y0 - 0.5 * (gt.ry + gt.dy), gt.ry, gt.dy)
    epsg = geokeys.get(3072) or geokeys.get(2048)  # Projected / Geographic CRS
    return GeoTransform(gt.x0, gt.dx, gt.rx, gt.y0, gt.ry, gt.dy, epsg=int(epsg) if epsg and epsg < 32767 else None)


def _geokeys(values: Sequence[int]) -> dict[int, int]:
    """GeoKeyDirectory -> {key id: value} for the short values stored inline (location 0)."""
    out = {}
    n = int(values[3]) if len(values) >= 4 else 0
    for k in range(n):
        key, loc, _, val = (int(v) for v in values[4 + 4 * k: 8 + 4 * k])
        if loc == 0:
            out[key] = val
    return out


def component_rings(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[np.ndarray]:
    """Rings of ONE 8-connected component: [exterior, *holes], each (n, 2) x/y, closed, exterior first.

    `mask` may be a crop of the image whose top-left pixel is at `offset` (row, col).

    Orientation (x right, y down as in the image): exterior counter-clockwise in the usual math
    sense of the shoelace formula (positive area), holes negative.
    """
    from skimage.measure import find_contours

    crop = np.pad(np.asarray(mask, dtype=np.uint8), 1)
    r0, c0 = offset
    contours = find_contours(crop, 0.5, fully_connected="high")
    rings = []
    for rc in contours:
        xy = np.stack([rc[:, 1] + c0 - 0.5, rc[:, 0] + r0 - 0.5], axis=1)  # padding -1, centre +0.5
        rings.append(_drop_collinear(xy))
    rings.sort(key=lambda ring: -abs(ring_area(ring)))
    return [ring if (ring_area(ring) > 0) == (i == 0) else ring[::-1] for i, ring in enumerate(rings)]


def ring_area(ring: np.ndarray) -> float:
    """Signed shoelace area of a closed ring (first point repeated last)."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """Remove vertices in the middle of straight runs (lossless); keeps the ring closed."""
    pts = ring[:-1]
    prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    cross = (pts[:, 0] - prev[:, 0]) * (nxt[:, 1] - pts[:, 1]) - (pts[:, 1] - prev[:, 1]) * (nxt[:, 0] - pts[:, 0])
    keep = pts[np.abs(cross) > 1e-9]
    return np.concatenate([keep, keep[:1]]) if len(keep) >= 3 else ring


def label_polygons(
    labels: np.ndarray, num_classes: int, background: int | None = 0, min_pixels: int = 1
) -> list[tuple[int, int, list[np.ndarray]]]:
    """(class, pixel count, rings) for every 8-connected component of every class but `background`."""
    out = []
    for cls, mask in _class_masks(labels, num_classes, background):
        for offset, crop in _components(mask):
            area = int(crop.sum())
            if area >= min_pixels:
                out.append((cls, area, component_rings(crop, offset)))
    return out


def polygons_to_mask(rings: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre is inside the exterior ring and outside every hole (pixel coordinates)."""
    from matplotlib.path import Path as MplPath

    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    centres = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], axis=1)
    inside = MplPath(rings[0]).contains_points(centres)
    for hole in rings[1:]:
        inside &= ~MplPath(hole).contains_points(centres)
    return inside.reshape(h, w)


def labels_to_geojson(
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    transform: GeoTransform | None = None,
    background: int | None = 0,
    min_pixels: int = 1,
    properties: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection: one Polygon feature per component, properties class/name/pixels.

    Without `transform` coordinates are pixel units (see the module doc); with it, map units, and
    the EPSG code (if the GeoTIFF names one) goes into a legacy `crs` member.
    """
    features = []
    for cls, area, rings in label_polygons(labels, len(class_names), background, min_pixels):
        if transform is not None:
            rings = [transform.apply(r) for r in rings]
            if transform.flips:
                rings = [r[::-1] for r in rings]
        features.append({
            "type": "Feature",
            "properties": {"class": cls, "name": class_names[cls], "pixels": area},
            "geometry": {"type": "Polygon", "coordinates": [np.round(r, 6).tolist() for r in rings]},
        })
    collection: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if properties:
        collection["properties"] = properties
    if transform is not None and transform.epsg:
        collection["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{transform.epsg}"}}
    return collection


def _class_masks(labels: np.ndarray, num_classes: int, background: int | None) -> list[tuple[int, np.ndarray]]:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"need a (H, W) label map, got shape {labels.shape}")
    present = np.unique(labels)
    return [(int(c), labels == c) for c in present if c < num_classes and c != background]


def _components(mask: np.ndarray) -> list[tuple[tuple[int, int], np.ndarray]]:
    """8-connected components as ((row, col) of the crop's top-left pixel, bool crop)."""
    lab, _ = ndimage.label(mask, structure=EIGHT)
    return [((sl[0].start, sl[1].start), lab[sl] == i)
            for i, sl in enumerate(ndimage.find_objects(lab), start=1) if sl is not None]


def _full(shape: tuple[int, ...], offset: tuple[int, int], crop: np.ndarray) -> np.ndarray:
    out = np.zeros(shape, bool)
    out[offset[0]: offset[0] + crop.shape[0], offset[1]: offset[1] + crop.shape[1]] = crop
    return out
