"""Transforms. Import the submodule you need (nothing heavy is imported here):

* :mod:`medad.transforms.image` -- MONAI Compose builders for 2D/3D images
  (:func:`~medad.transforms.image.image_transforms`, percentile normalisation in a foreground).
* :mod:`medad.transforms.brain` -- brain MRI preprocessing with the way back to the scan's grid.
* :mod:`medad.transforms.signal` -- filters, resampling, windows, spectrograms for signals.
"""
