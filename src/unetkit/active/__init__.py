"""Active learning: which unlabelled images to label next, and pre-annotations to label them with.

`uncertainty.py` (pure): per-pixel entropy, margin and TTA disagreement, aggregated per image.
`rank.py`: score a folder with an artifact and sort it; CSV. `diversity.py`: near-duplicate
hashes. `export.py`: the top-k images with masks, COCO RLE, CVAT and Label Studio pre-annotations.
"""

from unetkit.active.rank import RankedImage, Ranking, Scorer, rank_folder, rank_images, write_ranking_csv
from unetkit.active.uncertainty import entropy_map, margin_map, score_image, view_stats

__all__ = [
    "RankedImage", "Ranking", "Scorer", "entropy_map", "margin_map", "rank_folder", "rank_images", "score_image",
    "view_stats", "write_ranking_csv",
]
