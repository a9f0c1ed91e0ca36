"""A model and running it: the artifact folder, DenseNet-121, the predictor, its backends, CAMs."""
