"""Saliency CNN and saliency-guided FER network (Wei et al.).

Source: Q. Wei, "Saliency Maps-Based Convolutional Neural Networks for Facial Expression
Recognition", IEEE Access 9, 2021, doi:10.1109/ACCESS.2021.3082694 (method: a salient-feature
extraction model made of a dilated inception module, a Difference-of-Gaussian (DoG) module and a
multi-indicator saliency prediction module, input 3x240x320; and an FER network that uses the
predicted saliency map as a prior on multi-layer CNN features). Re-implemented from the paper's
description (abstract and DESIGN.md §2); no code was copied. Section/figure numbers are not
quoted because we could not check them.

Layout: blocks (:class:`DilatedInception`, :class:`DoGModule`, :class:`CentrePrior`) ->
:class:`SaliencyNet`, :class:`SaliencyFER` -> the multi-indicator losses (:func:`saliency_kld`,
:func:`saliency_cc`, :func:`saliency_nss`, :func:`multi_indicator_saliency_loss`) -> factories
:func:`saliency_cnn`, :func:`saliency_fer`.

Choices for details the source leaves open:
  * Encoder: a compact VGG-style BN conv stack to stride 8 (30x40 at 240x320), the last conv
    dilated (2), instead of an ImageNet VGG-16 — keeps the model servable on CPU.
  * Dilated inception: four parallel branches (1x1; 3x3 at dilation 1, 2, 4), 64 channels each,
    concatenated, fused by 1x1, with a residual connection.
  * DoG module: features reduced to 32 channels, blurred with fixed (not learned) separable
    Gaussians, centre-surround differences for sigma pairs (1, 2), (2, 4), (4, 8) feature pixels,
    blur normalised at the borders (normalised convolution), fused by 1x1 with the input.
  * Multi-indicator prediction: the head sees the features plus 8 learned Gaussian centre-prior
    maps (centre bias, as in saliency models trained on eye fixations) and is trained with a
    weighted combination of three indicators: ``10 KLD - 2 CC - 1 NSS`` (weights chosen as in
    the SAM saliency model, Cornia et al., IEEE TIP 2018, doi:10.1109/TIP.2018.2851672).
  * Saliency output: ``sigmoid`` of the upsampled logits, a (B, 1, H, W) map in [0, 1]; the
    losses normalise it to a distribution themselves.
  * FER: ResNet-18-layout trunk on a 224x224 face crop; the saliency map is average-pooled to
    the size of the stage-2, -3, -4 features, divided by its per-image max, and applied as a
    residual prior ``f * (1 + s)`` (never zeroes a feature); the three guided maps are globally
    pooled and concatenated (128 + 256 + 512) for the classifier. The saliency net runs on the
    same crop (it is fully convolutional) and is trained first, then frozen or fine-tuned.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from affectstream.models._cnn_blocks import conv_bn_act, resnet_stage, resnet_stem
from affectstream.models._labels import RAF_DB_LABELS
from affectstream.models.registry import ModelCard, register_model


class DilatedInception(nn.Module):
    """Parallel 1x1 and dilated 3x3 branches (dilations 1, 2, 4), concatenated, 1x1 fused,
    residual. Enlarges the receptive field at constant resolution.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, branch_channels: int = 64, dilations: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_act(channels, branch_channels, 1)]
            + [conv_bn_act(channels, branch_channels, 3, dilation=d) for d in dilations])
        self.fuse = conv_bn_act(branch_channels * (1 + len(dilations)), channels, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([b(x) for b in self.branches], dim=1)
        return F.relu(self.fuse(y) + x)


def _gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


class DoGModule(nn.Module):
    """Difference-of-Gaussian centre-surround responses of learned features.

    ``DoG_k(f) = G_{sc_k} * f - G_{ss_k} * f`` for each ``(sc_k, ss_k)`` in ``sigma_pairs``, with
    fixed separable Gaussian kernels applied depthwise and normalised at the borders
    (``(G * f) / (G * 1)``), so responses near the edge are not darkened and any input size works.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: input/output channels.
        reduced: channels the DoG filters act on.
        sigma_pairs: ``(centre, surround)`` sigmas in feature pixels.
    """

    def __init__(self, channels: int, reduced: int = 32,
                 sigma_pairs: tuple[tuple[float, float], ...] = ((1.0, 2.0), (2.0, 4.0), (4.0, 8.0))):
        super().__init__()
        self.reduce = conv_bn_act(channels, reduced, 1)
        self.reduced = reduced
        self.sigmas = sorted({s for pair in sigma_pairs for s in pair})
        self.pairs = [(self.sigmas.index(c), self.sigmas.index(s)) for c, s in sigma_pairs]
        for i, s in enumerate(self.sigmas):
            self.register_buffer(f"kernel{i}", _gaussian_kernel1d(s), persistent=False)
        self.fuse = conv_bn_act(reduced * (1 + len(sigma_pairs)) + channels, channels, 1)

    def _blur(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        r = k.numel() // 2
        kx = k.to(x.dtype).view(1, 1, 1, -1).expand(c, 1, 1, -1)
        ky = k.to(x.dtype).view(1, 1, -1, 1).expand(c, 1, -1, 1)
        x = F.conv2d(x, kx, padding=(0, r), groups=c)
        return F.conv2d(x, ky, padding=(r, 0), groups=c)

    def dog_responses(self, f: torch.Tensor) -> torch.Tensor:
        """Centre-surround responses ``(B, C, H, W) -> (B, C * n_pairs, H, W)`` (pair-major)."""
        ones = torch.ones_like(f[:, :1])
        blurred = []
        for i in range(len(self.sigmas)):
            k = getattr(self, f"kernel{i}")
            blurred.append(self._blur(f, k) / self._blur(ones, k))
        return torch.cat([blurred[c] - blurred[s] for c, s in self.pairs], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.reduce(x)
        return self.fuse(torch.cat([x, f, self.dog_responses(f)], dim=1))


class CentrePrior(nn.Module):
    """``K`` learned 2-D Gaussian prior maps (centre bias), generated at any size.

    Map ``k`` at normalised position ``(u, v)`` in (0, 1): ``exp(-((u-mx_k)^2/(2 sx_k^2)
    + (v-my_k)^2/(2 sy_k^2)))`` with means through a sigmoid and sigmas through a softplus.
    """

    def __init__(self, k: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.mean_raw = nn.Parameter(torch.randn(k, 2, generator=g) * 0.5)
        self.sigma_raw = nn.Parameter(torch.full((k, 2), -1.0))

    def forward(self, ref: torch.Tensor) -> torch.Tensor:
        """``ref`` ``(B, C, H, W)`` -> priors ``(B, K, H, W)`` (dtype/device of ``ref``)."""
        b, h, w = ref.shape[0], ref.shape[-2], ref.shape[-1]
        mu = torch.sigmoid(self.mean_raw).to(ref.dtype)
        sd = (F.softplus(self.sigma_raw) + 0.05).to(ref.dtype)
        u = (torch.arange(w, device=ref.device, dtype=ref.dtype) + 0.5) / w
        v = (torch.arange(h, device=ref.device, dtype=ref.dtype) + 0.5) / h
        gx = torch.exp(-((u.view(1, -1) - mu[:, :1]) ** 2) / (2 * sd[:, :1] ** 2))  # (K, W)
        gy = torch.exp(-((v.view(1, -1) - mu[:, 1:]) ** 2) / (2 * sd[:, 1:] ** 2))  # (K, H)
        p = gy.unsqueeze(-1) * gx.unsqueeze(1)  # (K, H, W)
        return p.unsqueeze(0).expand(b, -1, -1, -1)


class SaliencyNet(nn.Module):
    """Saliency prediction: encoder -> dilated inception -> DoG -> multi-indicator head.

    Args:
        width: channels of the deepest features.
        n_priors: learned centre-prior maps given to the head.
    """

    def __init__(self, width: int = 256, n_priors: int = 8):
        super().__init__()
        self.encoder = nn.Sequential(
            conv_bn_act(3, 32, 3, 2), conv_bn_act(32, 32),
            conv_bn_act(32, 64, 3, 2), conv_bn_act(64, 64),
            conv_bn_act(64, 128, 3, 2), conv_bn_act(128, 128),
            conv_bn_act(128, width), conv_bn_act(width, width, dilation=2),
        )
        self.inception = DilatedInception(width)
        self.dog = DoGModule(width)
        self.prior = CentrePrior(n_priors)
        self.head = nn.Sequential(conv_bn_act(width + n_priors, 64), nn.Conv2d(64, 1, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predict a saliency map.

        Args:
            x: ``(B, 3, H, W)`` RGB (240x320 by the card; any size works), [0, 1] then ImageNet
                mean/std.

        Returns:
            ``saliency`` ``(B, 1, H, W)`` in [0, 1] (sigmoid); ``saliency_logits``
            ``(B, 1, H, W)`` (pre-sigmoid, bilinearly upsampled from stride 8).
        """
        f = self.dog(self.inception(self.encoder(x)))
        logits = self.head(torch.cat([f, self.prior(f)], dim=1))
        logits = F.interpolate(logits, size=(x.shape[-2], x.shape[-1]), mode="bilinear",
                               align_corners=False)
        return {"saliency": torch.sigmoid(logits), "saliency_logits": logits}


def _guide(f: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    m = F.adaptive_avg_pool2d(s, (f.shape[-2], f.shape[-1]))
    m = m / (m.amax(dim=(2, 3), keepdim=True) + 1e-6)
    return f * (1.0 + m)


class SaliencyFER(nn.Module):
    """Saliency-guided FER: a saliency prior re-weights multi-layer CNN features.

    Args:
        num_classes: expression classes (7, RAF-DB order).
        dropout: before the classifier.
        detach_saliency: the prior applied to the features is detached, so the classification
            loss does not move the saliency net (it is trained by its own loss on the returned
            ``saliency`` output, or frozen).
    """

    def __init__(self, num_classes: int = 7, dropout: float = 0.3, detach_saliency: bool = True):
        super().__init__()
        self.saliency = SaliencyNet()
        self.detach_saliency = detach_saliency
        self.stem = resnet_stem(64)
        self.layer1 = resnet_stage("basic", 64, 64, 2, 1)
        self.layer2 = resnet_stage("basic", 64, 128, 2, 2)
        self.layer3 = resnet_stage("basic", 128, 256, 2, 2)
        self.layer4 = resnet_stage("basic", 256, 512, 2, 2)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(128 + 256 + 512, num_classes))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Classify faces with a saliency prior.

        Args:
            x: ``(B, 3, 224, 224)`` RGB face crop, [0, 1] then ImageNet mean/std.

        Returns:
            ``logits`` ``(B, num_classes)``; ``saliency`` ``(B, 1, 224, 224)`` in [0, 1] (not
            detached, so a saliency loss can train the saliency net jointly).
        """
        sal = self.saliency(x)["saliency"]
        s = sal.detach() if self.detach_saliency else sal
        f2 = _guide(self.layer2(self.layer1(self.stem(x))), s)
        f3 = _guide(self.layer3(f2), s)
        f4 = _guide(self.layer4(f3), s)
        pooled = torch.cat([f.mean(dim=(2, 3)) for f in (f2, f3, f4)], dim=1)
        return {"logits": self.head(pooled), "saliency": sal}


# ------------------------------------------------------------------------------------- losses

_EPS = 1e-7


def _as_distribution(m: torch.Tensor) -> torch.Tensor:
    m = m.flatten(1).clamp(min=0)
    return m / (m.sum(dim=1, keepdim=True) + _EPS)


def saliency_kld(pred: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
    """Kullback-Leibler divergence ``KL(P || Q) = sum_i P_i log((P_i + eps) / (Q_i + eps))``.

    ``P`` is the ground-truth fixation density and ``Q`` the prediction, each normalised to sum
    to 1 per image. Lower is better; 0 when they are equal.

    Args:
        pred: ``(B, 1, H, W)`` non-negative predicted map.
        density: ``(B, 1, H, W)`` non-negative ground-truth density (blurred fixations).

    Returns:
        Scalar, mean over the batch.
    """
    q = _as_distribution(pred)
    p = _as_distribution(density)
    return (p * torch.log((p + _EPS) / (q + _EPS))).sum(dim=1).mean()


def saliency_cc(pred: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
    """Linear correlation coefficient (Pearson) between prediction and density, per image.

    ``CC = cov(P, Q) / (std(P) std(Q))`` over pixels. Higher is better, in [-1, 1].

    Returns:
        Scalar, mean over the batch.
    """
    q = pred.flatten(1)
    p = density.flatten(1)
    q = q - q.mean(dim=1, keepdim=True)
    p = p - p.mean(dim=1, keepdim=True)
    return ((q * p).sum(dim=1) / (q.norm(dim=1) * p.norm(dim=1) + _EPS)).mean()


def saliency_nss(pred: torch.Tensor, fixations: torch.Tensor) -> torch.Tensor:
    """Normalised scanpath saliency: mean of the standardised prediction at fixated pixels.

    ``NSS = sum_i Qn_i F_i / sum_i F_i`` with ``Qn = (Q - mean Q) / std Q`` per image and ``F`` the
    binary fixation map. Higher is better (0 = chance).

    Args:
        pred: ``(B, 1, H, W)`` predicted map.
        fixations: ``(B, 1, H, W)`` binary fixation map (1 at fixated pixels).

    Returns:
        Scalar, mean over the batch.
    """
    q = pred.flatten(1)
    q = (q - q.mean(dim=1, keepdim=True)) / (q.std(dim=1, keepdim=True) + _EPS)
    f = fixations.flatten(1).to(q.dtype)
    return ((q * f).sum(dim=1) / (f.sum(dim=1) + _EPS)).mean()


def multi_indicator_saliency_loss(pred: torch.Tensor, density: torch.Tensor, fixations: torch.Tensor,
                                  w_kld: float = 10.0, w_cc: float = 2.0,
                                  w_nss: float = 1.0) -> dict[str, torch.Tensor]:
    """Multi-indicator saliency loss ``L = w_kld KLD - w_cc CC - w_nss NSS``.

    Args:
        pred: ``(B, 1, H, W)`` predicted saliency in [0, 1] (``saliency`` output).
        density: ``(B, 1, H, W)`` ground-truth fixation density.
        fixations: ``(B, 1, H, W)`` binary fixation map.
        w_kld: weight of KLD (minimised).
        w_cc: weight of CC (maximised).
        w_nss: weight of NSS (maximised).

    Returns:
        ``{"kld", "cc", "nss", "total"}`` scalar tensors.
    """
    parts = {"kld": saliency_kld(pred, density), "cc": saliency_cc(pred, density),
             "nss": saliency_nss(pred, fixations)}
    parts["total"] = w_kld * parts["kld"] - w_cc * parts["cc"] - w_nss * parts["nss"]
    return parts


# ---------------------------------------------------------------------------------- factories

_PAPER = ("Wei, Saliency Maps-Based Convolutional Neural Networks for Facial Expression "
          "Recognition, IEEE Access 9 (2021), doi:10.1109/ACCESS.2021.3082694")


@register_model(ModelCard(
    name="saliency_cnn",
    task="saliency",
    input_size=(240, 320),
    color="rgb",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    alignment="bbox",
    label_names=(),
    paper=_PAPER,
    licence="Apache-2.0 (architecture code of this project; no trained weights yet)",
    weights=None,
    extra={
        "output": "saliency",
        "output_shapes": {"saliency": "(B,1,240,320) in [0,1]", "saliency_logits": "(B,1,240,320)"},
        "loss": "10*KLD - 2*CC - 1*NSS",
        "feature_layers": ("encoder", "inception", "dog"),
    },
))
def saliency_cnn(width: int = 256) -> SaliencyNet:
    """Saliency CNN (dilated inception + DoG + multi-indicator head), 3x240x320 input."""
    return SaliencyNet(width=width)


@register_model(ModelCard(
    name="saliency_fer",
    task="expression",
    input_size=(224, 224),
    color="rgb",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    alignment="bbox",
    label_names=RAF_DB_LABELS,
    paper=_PAPER,
    licence="Apache-2.0 (architecture code of this project; no trained weights yet)",
    weights=None,
    extra={
        "output": "logits",
        "saliency_output": "saliency",
        "output_shapes": {"logits": "(B,7)", "saliency": "(B,1,224,224) in [0,1]"},
        "feature_layers": ("layer2", "layer3", "layer4"),
    },
))
def saliency_fer(num_classes: int = 7, dropout: float = 0.3) -> SaliencyFER:
    """Saliency-guided FER network, RAF-DB 7 classes, 224x224 RGB face crop."""
    return SaliencyFER(num_classes=num_classes, dropout=dropout)
