"""A user's own package for codistill: a small ResNet and an image-folder dataset of Fashion-MNIST PGM files.

codistill imports these by path (`model._target_`, `data.train._target_`); nothing here imports codistill except
the scripts that write the images (write_images) and train from Python (fit).
"""
