"""The statistics every layer shares, at the bottom of the import graph (numpy, scipy, scikit-learn only):
``metrics`` (binary and per-domain metrics, the threshold rules), ``bootstrap`` (rank AUC, figure-, slide- and
slide-paired bootstrap intervals) and ``ensemble`` (averaging probabilities by mean logit).

Layers, imports only downward: ``stats``; ``model``; ``data``; ``training``; ``evaluation``; ``lab``.
"""
