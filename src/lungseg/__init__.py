"""lungseg: chest CT (DICOM) to lung / nodule segmentation models, predictions, metrics and a report."""

__version__ = "0.1.0"
