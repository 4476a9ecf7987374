"""Exports of results: COCO (and, later, DICOM SR)."""
