"""Pure ``nn.Module``s: the FPN generators, the blur-kernel estimator and the discriminators.

Constructor arguments are numbers and strings only: no file I/O, no device moves. Building from a
config and loading weights is ``deblur.models``' job. Imports nothing of deblur but ``deblur.config``.
"""
