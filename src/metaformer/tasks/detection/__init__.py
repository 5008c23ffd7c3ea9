"""Object detection and instance segmentation: COCO files, the 1x schedule, pycocotools' metrics."""
