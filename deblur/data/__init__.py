"""Training data: synthetic blur (kernels, noise, JPEG), image datasets, WebDataset shards and the
kernel estimator's crops.

Remote files (fsspec URLs and their read cache) are generic I/O and live in ``runtime.remote``.
Imports nothing of deblur but ``deblur.config``.
"""
