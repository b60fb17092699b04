"""The paper's loss terms, one function each, with the equation in the docstring."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    """Class-weighted BCE with logits, averaged over the batch.

        L_cls = -mean_i [ w_+ * y_i * log sigmoid(z_i) + (1 - y_i) * log(1 - sigmoid(z_i)) ]

    Class imbalance (about 1 atypical : 3.5 normal) is handled by ``w_+ = pos_weight``,
    set to n_normal / n_atypical of the training split, so both classes weigh the same
    in total and a logit of 0 (P = 0.5) is the balanced decision point.

    ``labels`` may be soft, y_i in [0, 1] (``--targets votes``: the share of experts calling the
    figure atypical). The same formula then pulls a 2-of-3 figure towards sigmoid(z) = 2w/(2w+1)
    rather than 1: the network is asked to be less certain where the experts were. ``pos_weight``
    is still counted on the majority labels, so w_+ y_i weighs the atypical votes.
    """
    weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float32, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weight)


def subtype_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the subtype head against the experts' subtype distribution, over labelled figures.

    With head logits h_i (B, S), q_i the share of experts naming each of the S subtypes for figure i
    (``datasets.subtype_targets``; a row of zeros where none was named) and L the figures with a label::

        L_sub = (1/|L|) sum_{i in L} -sum_s q_{i,s} log softmax(h_i)_s

    Returns 0 (with a gradient path) when no figure of the batch has a subtype.
    """
    h = logits.float()
    q = targets.to(h.device, torch.float32)
    labelled = q.sum(dim=1) > 0
    if not bool(labelled.any()):
        return h.sum() * 0.0
    per_figure = -(q * F.log_softmax(h, dim=1)).sum(dim=1)
    return per_figure[labelled].mean()


def alignment_loss(descriptors: torch.Tensor, domains: torch.Tensor, standardise: bool = False) -> torch.Tensor:
    """Penalise the spread of per-domain mean descriptors across the domains in the batch.

    With GAP descriptors f_i (after CBAM) and the K >= 2 domains present in the batch,
    mu_k = mean_{i in k} f_i and, per channel c, the (population) variance across domains
    s_c^2 = (1/K) sum_k (mu_{k,c} - mean_k' mu_{k',c})^2::

        L_align = mean_c log(1 + s_c^2)

    ``standardise`` (not in the paper) first divides each channel by its standard deviation over
    the batch, sigma_c (held constant: no gradient), so s_c^2 / sigma_c^2 is the share of the
    channel's spread that lies between domains (at most 1 with the domain-balanced sampler's equal
    counts) and the term no longer depends on the descriptors' scale. Unstandardised, the GAP
    descriptors of a from-scratch network are small and s_c^2 ~ 1e-3, so log(1 + s_c^2) ~ s_c^2
    and the term barely acts beside a classification loss of ~0.7.

    Returns 0 (with a gradient path) when fewer than two domains are present.
    """
    f = descriptors.float()
    present = torch.unique(domains)
    if present.numel() < 2:
        return f.sum() * 0.0
    if standardise:
        f = f / f.std(dim=0, unbiased=False).detach().clamp_min(1e-6)
    means = torch.stack([f[domains == d].mean(dim=0) for d in present])  # (K, C)
    s2 = means.var(dim=0, unbiased=False)
    return torch.log1p(s2).mean()


def distillation_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                      temperature: float = 2.0) -> torch.Tensor:
    """Temperature-scaled KL from the EMA teacher to the student for one logit (Bernoulli outputs).

        p_T = sigmoid(z_T / T),  p_S = sigmoid(z_S / T)
        L_KD = T^2 * mean_i KL(Bern(p_T) || Bern(p_S))
             = T^2 * mean_i [ p_T log(p_T / p_S) + (1 - p_T) log((1 - p_T) / (1 - p_S)) ]

    A two-class softmax over [0, z] equals sigmoid(z), so this is the usual softmax KD;
    a softmax over [-z, z] would silently double z. Teacher logits carry no gradient.
    """
    t = teacher_logits.detach().float() / temperature
    s = student_logits.float() / temperature
    p_t = torch.sigmoid(t)
    log_pt, log_1m_pt = F.logsigmoid(t), F.logsigmoid(-t)
    log_ps, log_1m_ps = F.logsigmoid(s), F.logsigmoid(-s)
    kl = p_t * (log_pt - log_ps) + (1 - p_t) * (log_1m_pt - log_1m_ps)
    return temperature**2 * kl.mean()


def dann_schedule(progress: float, gamma: float = 10.0) -> float:
    """Alignment weight ramp from DANN (Ganin & Lempitsky 2015).

    lambda(p) = 2 / (1 + exp(-gamma p)) - 1, p in [0, 1].
    """
    p = min(max(progress, 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


def kd_weight(epoch: float, max_weight: float = 0.5, warmup_epochs: float = 10.0) -> float:
    """Distillation weight warmed up linearly: w(e) = max_weight * min(1, e / warmup_epochs)."""
    if warmup_epochs <= 0:
        return max_weight
    return max_weight * min(1.0, max(epoch, 0.0) / warmup_epochs)
