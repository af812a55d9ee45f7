"""What a trained model still learns from validation data: calibration, TTA and postprocessing.

Both read labelled validation images, predict them with the artifact (tiled, as `predict` does),
fit something small and store it in the artifact with `update_artifact`, so every later
prediction (predict, evaluate, export, serve) applies it through `InferencePipeline` /
`labels_from_probabilities` without any flag.

    labelled data --load_labelled--> samples --iter_probabilities--> logits / probabilities
      calibration.calibrate_model:        sample valid pixels -> fit_temperature -> temperature or scale/bias
      tta.tune_model_tta:                 plain vs the views' mean, gated -> tta on/off, then
        scales.choose_scales:             (reduced-resolution models) one resolution vs three, gated -> resolutions
        (both) compare.Comparison:        every image judged, no map held: score parts, ECE bins, pixel sample
        (each mean) calibration.recalibrate_samples: log(mean) / T, T fitted and gated -> tta_temperature,
                                          resolutions_temperature
      postprocess.tune_model_postprocess: tune_postprocess (greedy, strict improvements) -> postprocess dict

Tune postprocessing AFTER calibrating: a tuned threshold refers to the calibrated probabilities.
`store.store_tuning` writes the result and its record (in place, or into a copy).
"""
