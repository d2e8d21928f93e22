"""DICOM: de-identification (PS3.15 Basic Application Level Confidentiality Profile)."""
