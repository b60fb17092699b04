"""Labelled figures for training and evaluation: dataset loaders (``datasets``), slide-disjoint splits
(``split``) and the domain-balanced batch sampler (``sampler``).

Layers, imports only downward: ``stats`` (metrics, thresholds, bootstraps) and ``model`` (the network and
its one preprocessing path) below; ``data`` here; ``training`` and ``evaluation`` above; ``lab`` (studies)
on top.
"""
