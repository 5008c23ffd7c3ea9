from .predict import IMAGE_EXTENSIONS, Prediction, find_images, predict

__all__ = ["IMAGE_EXTENSIONS", "Prediction", "find_images", "predict"]
