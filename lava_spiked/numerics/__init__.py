"""The arithmetic every backend shares.

``phase``
    The one-spike phase code (float golden model).
``fixed``
    The integer arithmetic of the ``fixed_pt`` models.
``nonlinear``
    Activation and LayerNorm window-close stages (float and integer).
``torch_stages``
    The same stages in torch, for the engine.
"""
