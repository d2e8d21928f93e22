"""Metrics of each capability: segmentation overlap and surface distances, classification (ROC AUC, balanced
accuracy), registration (Jacobian determinant, folding, SDlogJ)."""
