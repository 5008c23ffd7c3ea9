"""The reference model: the MetaFormer's configuration, layers, token mixers, blocks, classifier and backbone, the
dense models on it, the registry of named variants (``zoo.py``) and the records of their weights
(``pretrained.py``). ``config``, ``zoo`` and ``pretrained`` import no torch."""
