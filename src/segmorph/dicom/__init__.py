"""DICOM: de-identification (PS3.15 Basic Application Level Confidentiality Profile), DICOM-SEG and RT-STRUCT
objects referring to a source series, and a DICOMweb (PACS) client and workflow."""
