"""Training and evaluation of the paper models on the public datasets (imports models/ and
operators/, never pipeline/).

* :mod:`training.datasets` — readers of the published on-disk formats (RAF-DB, AffectNet,
  FER2013/FERPlus, CK+, DISFA, BP4D/FERA 2015, CAT2000).
* :mod:`training.align` — face geometry from the serving pipeline's detector + FaceMesh, cached.
* :mod:`training.augment` — the serving crop plus landmark-aware augmentation.
* :mod:`training.recipes` — pydantic recipe schema (``configs/train/*.yaml``).
* :mod:`training.tasks` — losses and predictions per model family.
* :mod:`training.trainer` — the loop: progress, CSV/TensorBoard, checkpoints, exact resume, AMP.
* :mod:`training.metrics` — accuracy, macro-F1, ICC(3,1), MAE, PCC, AUC-Judd, NSS, CC, KLD, SIM.
* :mod:`training.evaluate` — checkpoint evaluation and the papers' tables.
* :mod:`models.checkpoint` — checkpoints that carry their card; :func:`load_checkpoint`.
"""
