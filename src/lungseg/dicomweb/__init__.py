"""A PACS in the loop through DICOMweb: query (QIDO-RS) and retrieve (WADO-RS) CT series into a local
archive that discovery reads, store DICOM-SEG results back (STOW-RS), and a local Orthanc for users
without a PACS (``lungseg pacs start``)."""
