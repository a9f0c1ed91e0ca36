"""ChestX-ray14 on disk: the dataset's tables and splits, the preprocessed image cache, augmentation."""
