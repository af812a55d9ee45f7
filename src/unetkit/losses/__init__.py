"""Losses: `functional` (pure tensor math on logits and label maps), `losses.SegmentationLoss` (the
configured weighted sum, with deep supervision)."""
