"""Image classification (e.g. normal vs lesion) with grouped splits, ROC metrics and Grad-CAM maps.

Modules: ``data`` (CSV and class-folder datasets, input preparation), ``split`` (grouped, stratified
splits), ``task`` (the training-loop task), ``plots`` and ``pipeline`` (train_classifier,
predict_classifier). The networks live in :mod:`segmorph.nn.classifiers`, the metrics in
:mod:`segmorph.metrics.classification`, Grad-CAM in :mod:`segmorph.interpret.gradcam`. This package imports
nothing eagerly so that every ``segmorph`` command starts fast.
"""
