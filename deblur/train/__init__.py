"""Training: the DeblurGANv2 trainer (generator, refiner, GAN; ``gan_trainer``), the kernel
estimator's trainer (``kernel_trainer``) and the losses.

May import ``deblur.archs``, ``deblur.data``, the model registry and the kernel-aware deblurrer (a refiner's
frozen first stage), never the command-line tools on top (``deblur.predict``, ``deblur.evaluate``).
"""
