"""Task-specific code built on the models: classification now; segmentation and detection later."""
