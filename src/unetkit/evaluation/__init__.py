"""Evaluation: a model on labelled data, above inference and metrics.

`labelled` loads labelled images with the model's classes and predicts them (the data path shared
with calibration and postprocessing tuning, `unetkit.tuning`); `evaluate` scores a model with the
full metric suite of `metrics.streaming.Evaluator`; `table` prints the result; `report` and
`figures` write the self-contained HTML report.
"""
