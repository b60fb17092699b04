"""Visual report of one stack: every page with P(atypical), class and where the network looked
(Grad-CAM at denseblock3 by default, or the CBAM spatial attention).

Writes ``OUT/<stem>_report.png`` (montage), ``OUT/<stem>_report.html`` (self-contained, images as
base64) and ``OUT/<stem>_report.json`` (the per-page numbers).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from model.io import read_stack, write_json_atomic  # noqa: E402
from model.network import SeedEnsemble  # noqa: E402
from model.predict import Predictor  # noqa: E402
from model.preprocess import page_to_rgb_uint8, pages_to_batch  # noqa: E402
from model.weights import format_threshold  # noqa: E402

COLUMNS = 4  # pages per montage row (each page takes two panels: image, image + attention)


EXPLANATIONS = ("gradcam", "cbam")
EXPLANATION_TEXT = {"gradcam": "Grad-CAM of the atypical logit at denseblock3",
                    "cbam": "CBAM spatial attention of the classifier"}


def grad_cam(model, batch: torch.Tensor, layer: str = "denseblock3") -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM (Selvaraju et al. 2017) of the atypical logit at a DenseNet stage.

    With activations A_k (B, K, h, w) of ``features.<layer>`` and the logit z::

        alpha_k = mean_{i,j} dz / dA_k[i, j]
        CAM = ReLU(sum_k alpha_k A_k)

    ``denseblock3`` gives an 8x8 map at 128 px, finer than the 4x4 CBAM map. Returns (logits, CAM).
    """
    module = getattr(model.features, layer)
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["a"] = output

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            x = batch.clone().requires_grad_(True)  # inference-mode tensors cannot enter autograd
            logits = model(x)
            logits.sum().backward()  # images are independent in eval mode: one backward for all
    finally:
        handle.remove()
    a = captured["a"]
    weights = a.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * a).sum(dim=1))
    model.zero_grad(set_to_none=True)
    return logits.detach(), cam.detach()


def explain_pages(model, pages: Sequence[np.ndarray], chunk: int = 16,
                  method: str = "gradcam") -> tuple[np.ndarray, list[np.ndarray]]:
    """P(atypical) per page and a map (h, w) of where the classifier looked, fp32.

    ``gradcam``: Grad-CAM of the atypical logit at denseblock3; ``cbam``: the CBAM spatial attention.
    For a ``SeedEnsemble`` the logit is the members' mean (the ensemble's own) and the map is the
    mean of the members' maps (each member's Grad-CAM is of its own logit).
    """
    if method not in EXPLANATIONS:
        raise ValueError(f"explanation {method!r} not in {EXPLANATIONS}")
    cfg = model.config
    device = next(model.parameters()).device
    networks = list(model.members) if isinstance(model, SeedEnsemble) else [model]
    probs, maps = [], []
    for start in range(0, len(pages), chunk):
        batch = pages_to_batch(pages[start:start + chunk], cfg.input_size, cfg.mean, cfg.std).to(device)
        member_logits, member_heats = [], []
        for network in networks:
            if method == "gradcam":
                logits, heat = grad_cam(network, batch)
            else:
                with torch.inference_mode():
                    logits, _, attention = network(batch, return_features=True)
                heat = attention[:, 0]
            member_logits.append(logits.float())
            member_heats.append(heat.float())
        logits, heat = torch.stack(member_logits).mean(dim=0), torch.stack(member_heats).mean(dim=0)
        probs.append(torch.sigmoid(logits.float()).cpu())
        maps.extend(h.float().cpu().numpy() for h in heat)
    return torch.cat(probs).numpy().astype(np.float64), maps


def attention_on_page(attention: np.ndarray, page_shape: tuple[int, int]) -> np.ndarray:
    """Upsample an (h, w) attention map onto the page (bilinear), normalised to [0, 1].

    The network sees the centre square crop of the page, so the map covers that square;
    outside it (non-square pages only) the result is NaN (drawn transparent).
    """
    height, width = page_shape
    side = min(height, width)
    up = F.interpolate(torch.as_tensor(attention)[None, None], size=(side, side), mode="bilinear",
                       align_corners=False)[0, 0].numpy()
    lo, hi = float(up.min()), float(up.max())
    up = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
    out = np.full((height, width), np.nan, dtype=np.float32)
    top, left = int(round((height - side) / 2.0)), int(round((width - side) / 2.0))  # as torchvision's centre crop
    out[top:top + side, left:left + side] = up
    return out


def overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """Blend a [0, 1] heat map (NaN = none) over an RGB uint8 page."""
    colours = plt.get_cmap(cmap)(np.nan_to_num(heat))[..., :3] * 255.0
    weight = np.where(np.isnan(heat), 0.0, alpha)[..., None]
    return np.clip(rgb * (1 - weight) + colours * weight, 0, 255).astype(np.uint8)


def png_base64(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def render_montage(pages: Sequence[np.ndarray], overlays: Sequence[np.ndarray], probs: np.ndarray,
                   classes: Sequence[str], title: str, out: str | Path) -> Path:
    """Grid of (page, page + attention) pairs with page number, class and P(atypical) as titles."""
    n = len(pages)
    rows = -(-n // COLUMNS)
    cols = 2 * min(n, COLUMNS)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.15 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, COLUMNS)
        colour = "crimson" if classes[i] == "atypical" else "black"
        axes[r, 2 * c].imshow(pages[i])
        axes[r, 2 * c].set_title(f"#{i} {classes[i]}", fontsize=8, color=colour)
        axes[r, 2 * c + 1].imshow(overlays[i])
        axes[r, 2 * c + 1].set_title(f"P(atyp) {probs[i]:.3f}", fontsize=8, color=colour)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def render_html(stack: Path, rows: list[dict], pages: Sequence[np.ndarray], overlays: Sequence[np.ndarray],
                montage: Path, description: str,
                explanation: str = "Grad-CAM of the atypical logit at denseblock3") -> str:
    """A self-contained HTML page: one card per page, both images inlined as base64 PNG."""
    cards = []
    for row, page, over in zip(rows, pages, overlays):
        colour = "#c0143c" if row["class"] == "atypical" else "#222"
        cards.append(
            f'<div class="card"><img src="data:image/png;base64,{png_base64(page)}" alt="page {row["page"]}">'
            f'<img src="data:image/png;base64,{png_base64(over)}" alt="attention {row["page"]}">'
            f'<p style="color:{colour}"><b>#{row["page"]} {row["class"]}</b><br>P(atypical) = '
            f'{row["p_atypical"]:.3f}<br><small>{row["width"]}&times;{row["height"]} px, map '
            f'{row["attention_min"]:.2f}&ndash;{row["attention_max"]:.2f}</small></p></div>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(stack.name)} report</title>
<style>body{{font-family:sans-serif;margin:1.5em}} .grid{{display:flex;flex-wrap:wrap;gap:12px}}
.card{{border:1px solid #ccc;padding:6px;width:272px}} .card img{{width:128px;height:128px;
image-rendering:pixelated;margin-right:4px}} .card p{{margin:4px 0 0 0;font-size:13px}}</style></head>
<body><h1>{html.escape(stack.name)}</h1><p>{html.escape(description)}</p>
<p>Left: page as stored. Right: {html.escape(explanation)} (upsampled, min&ndash;max
normalised per page; red = high) over the centre square the network sees.</p>
<div class="grid">{''.join(cards)}</div>
<p>Montage of the same pages: {html.escape(montage.name)} (beside this file).</p>
</body></html>
"""


def report_stack(stack: str | Path, out: str | Path, weights: str | Path, device: str = "cpu",
                 threshold: float | None = None, method: str = "gradcam", tta: str | None = None) -> dict[str, Path]:
    """Classify one stack with the model in ``weights`` and write the montage, HTML and JSON.

    P(atypical) and the class come from the container's own ``Predictor`` (the card's test-time
    augmentation unless ``tta`` overrides it, same autocast), so the report shows the numbers the
    container writes; the map explains the upright view's logit (a map of 8 rotated views would
    have to be rotated back and would blur where the network looked).
    """
    stack, out = Path(stack), Path(out)
    predictor = Predictor(weights, device, tta=tta)
    card = predictor.card
    threshold = float(card["threshold"] if threshold is None else threshold)
    raw_pages = read_stack(stack)
    pages = [page_to_rgb_uint8(p) for p in raw_pages]
    probs = predictor.predict_pages(raw_pages)
    _, maps = explain_pages(predictor.model, raw_pages, method=method)
    heats = [attention_on_page(a, p.shape[:2]) for a, p in zip(maps, pages)]
    overlays = [overlay(p, h) for p, h in zip(pages, heats)]
    classes = ["atypical" if p >= threshold else "normal" for p in probs]
    rows = [{"page": i, "class": c, "p_atypical": float(p), "height": int(pg.shape[0]), "width": int(pg.shape[1]),
             "attention_min": float(a.min()), "attention_max": float(a.max())}
            for i, (c, p, pg, a) in enumerate(zip(classes, probs, pages, maps))]
    description = (f"{len(pages)} pages; weights {weights} ({card.get('selected_model', 'model')}), "
                   f"test-time augmentation {predictor.tta}, {method}, threshold {format_threshold(threshold)}; "
                   f"{sum(c == 'atypical' for c in classes)} classified atypical.")
    out.mkdir(parents=True, exist_ok=True)
    montage = render_montage(pages, overlays, probs, classes, f"{stack.name}: {description}",
                             out / f"{stack.stem}_report.png")
    page = out / f"{stack.stem}_report.html"
    explanation = EXPLANATION_TEXT[method]
    page.write_text(render_html(stack, rows, pages, overlays, montage, description, explanation))
    data = out / f"{stack.stem}_report.json"
    write_json_atomic({"stack": str(stack), "weights": str(weights), "threshold": threshold, "tta": predictor.tta,
                       "pages": rows}, data)
    return {"montage": montage, "html": page, "json": data}
