"""Metrics from counts: `confusion` (confusion matrices), `scores` (IoU, Dice… and the absent-class
policy), plus boundary, topology, ranking and calibration metrics and the streaming `Evaluator`."""
