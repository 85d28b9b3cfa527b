"""Save a Plan to a versioned HDF5 file and load it back, without torch
(:mod:`lava_spiked.export.hdf5`); ``python -m lava_spiked.export`` is
:mod:`lava_spiked.export.__main__`."""
from lava_spiked.export.hdf5 import ExportError, load, save

__all__ = ["ExportError", "load", "save"]
