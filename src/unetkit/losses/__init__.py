"""Losses: `functional` (pure tensor math on logits and label maps), `losses.LOSSES` (the catalog of
loss terms: a new loss is one builder and one registration) and `losses.SegmentationLoss` (the
configured weighted sum, with deep supervision)."""
