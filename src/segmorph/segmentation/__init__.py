"""Segmentation: dataset loading and fingerprint, the plan, preprocessing with its undo record, the training task
and losses, the pipeline from folder to run, prediction on the scans' own grids, post-processing, evaluation,
classical baselines, export and the demo."""
