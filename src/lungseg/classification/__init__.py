"""Nodule malignancy classification: the nodule table and 2.5-D patches of each case (this package's
:mod:`~lungseg.classification.nodule_table`, :mod:`~lungseg.classification.patches`,
:mod:`~lungseg.classification.labels`, ``lungseg nodule-patches``), and the classifiers trained on them."""
