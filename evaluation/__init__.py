"""Offline evaluation in the MIDOG 2025 Track 2 format.

Three commands (``python -m evaluation COMMAND --help``):

* ``pack``   labelled patches -> challenge-format TIFF stacks, Grand Challenge job folders
  and a ``ground_truth.json`` in the official evaluator's format (``evaluation.pack``);
* ``score``  ground truth + per-stack prediction files -> the official Track 2 metrics
  (pooled and per tumour domain) with bootstrap confidence intervals, and plots
  (``evaluation.score``, ``evaluation.plots``);
* ``report`` one stack -> montage and HTML page with P(atypical), class and CBAM attention
  (``evaluation.report``).

Submodules are imported on demand so that ``score`` does not pay for the training stack.
"""
