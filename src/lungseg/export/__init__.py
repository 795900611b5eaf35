"""Predictions back to the clinic: DICOM-SEG files referencing the source series (``lungseg export-seg``)."""
