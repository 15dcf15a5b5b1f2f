"""medad: medical anomaly detection.

Importing ``medad`` is cheap: heavy modules (torch, MONAI, MNE) load only when the
submodule that needs them is imported.
"""

__version__ = "0.1.0"

from medad.errors import MedadError, ReadError, InputError  # noqa: F401
