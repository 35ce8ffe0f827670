"""Tools across the layers: the optimizer comparison of ``rlopt bench optim``, the TensorBoard event reader
and the run plots of ``rlopt plot``.

Needs the ``rl`` extra (TensorBoard, matplotlib, tqdm) and, for the comparison's bundled datasets, the
``bilevel`` extra (scikit-learn); every third-party import is lazy, inside the function that needs it.
"""
