"""Semantic segmentation: datasets, the official Semantic FPN recipe, mIoU evaluation and prediction."""
