"""Interpretation: Grad-CAM for classifiers and segmentation networks, test-time-augmentation uncertainty."""
