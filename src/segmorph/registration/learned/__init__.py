"""Learned registration: configuration, the velocity-field network, the loaded model that registers pairs, the
segmentation prior it may use, and its training."""
