"""Dataset quality checks for segmentation and classification datasets (geometry, intensities, labels,
duplicates, outliers): see :mod:`segmorph.qc.quality`."""
