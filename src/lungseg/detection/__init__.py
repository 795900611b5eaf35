"""Two-stage nodule detection, as in the LUNA16 challenge: a segmentation network's probability map gives the
candidates (high sensitivity, many false positives), a classifier of 2.5-D patches around each candidate removes the
false positives.

- :mod:`lungseg.detection.candidates` (``lungseg candidates``): the candidates of one scan as a nodule table and
  patches, labelled ``nodule`` / ``non_nodule`` against the reference where the case has one;
- the classifier trains through the one training core (``task: classification``, ``cls_task: candidate``) and
  scores candidates with ``lungseg classify``;
- :mod:`lungseg.detection.rescore` (``lungseg rescore-candidates``): the scan's mask and probability map with every
  candidate scored by the classifier.
"""
