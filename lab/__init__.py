"""Studies: everything that compared recipes or procedures rather than reproducing ``weights/``.

``sweep`` (grids of training runs side by side), ``procedures`` (procedures compared on unseen domains,
against rules written before the runs), ``compare`` (paired comparisons of runs and exports), ``heldout``
(leave-one-domain-out reports rescored), ``born_again`` (distillation into one network), ``pretrain_ssl``
(self-supervised pretraining). The top layer: it may import anything; nothing imports it. A study that
earns a place in the shipped procedure moves down into ``training/``.
"""
