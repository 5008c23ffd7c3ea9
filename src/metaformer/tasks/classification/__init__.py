"""Image classification: ImageNet-layout folders, the paper's recipe, top-1/top-k and per-class accuracy."""
