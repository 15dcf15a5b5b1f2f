"""Plain ``torch.nn`` networks with a ``spatial_dims`` argument (MONAI style).

Import from the submodules (kept separate so ``import medad.nets`` loads nothing heavy):

* :mod:`medad.nets.autoencoder` -- conv autoencoder, VAE and memory-augmented AE (1D/2D/3D);
* :mod:`medad.nets.memory` -- MemAE memory module (prototypes, hard shrinkage, entropy);
* :mod:`medad.nets.cnn` -- residual dilated CNN for signals;
* :mod:`medad.nets.image_encoders` -- small 2D encoders shared by image-screening detectors.
"""
