"""Image classification (e.g. normal vs lesion) with grouped splits, ROC metrics and Grad-CAM maps.

Modules: ``data`` (CSV and class-folder datasets, input preparation), ``split`` (grouped, stratified
splits), ``models`` (SimpleCNN, ResNet 2D/3D), ``task`` (the training-loop task), ``metrics``,
``plots``, ``gradcam`` (Grad-CAM for classifiers and segmentation networks, TTA variance),
``pipeline`` (train_classifier, predict_classifier) and ``cli``. Import from the modules; this
package imports nothing eagerly so that every ``segmorph`` command starts fast.
"""
