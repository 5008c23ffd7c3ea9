"""Object detection and instance segmentation on COCO-format data: RetinaNet and Mask R-CNN."""
