"""Golden models: numpy references that every backend is checked against.

``models``
    A Plan's golden models, one sample at a time (float and fixed), and
    what counts as clipping.
``attention``
    The WOSS softmax and one attention, in closed form and in integers.
"""
