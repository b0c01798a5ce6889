"""DSAN: deeply-supervised attention network for facial expression recognition.

Source: Y. Fan, V. O. K. Li, J. C. K. Lam, "Facial Expression Recognition with Deeply-Supervised
Attention Network", IEEE Transactions on Affective Computing, 2020,
doi:10.1109/TAFFC.2020.2988264 (proposed-method section: attention blocks on several scales, a
classifier on each (deep supervision), ensemble of the side outputs; two-stage training with race,
gender and age). Re-implemented from the paper's abstract-level description and DESIGN.md §2; the
section/figure numbers of the paper were not available to us, so none are quoted.

Layout: :class:`AttentionBlock` -> :class:`DSAN` -> registered factory :func:`dsan`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from affectstream.models._cnn_blocks import conv_bn_act, resnet_stage, resnet_stem
from affectstream.models._labels import RAF_DB_LABELS
from affectstream.models.registry import ModelCard, register_model

# RAF-DB's manual demographic annotations (the attributes the two-stage scheme uses).
GENDER_LABELS: tuple[str, ...] = ("male", "female", "unsure")
RACE_LABELS: tuple[str, ...] = ("caucasian", "african-american", "asian")
AGE_GROUP_LABELS: tuple[str, ...] = ("0-3", "4-19", "20-39", "40-69", "70+")


class AttentionBlock(nn.Module):
    """Spatial attention block of one side branch.

    A small conv net maps the trunk features ``f`` to a one-channel mask ``a = sigmoid(.)`` in
    [0, 1]; the side feature is the attention-weighted average ``sum(a * f) / sum(a)`` over
    positions, so the classifier sees what the mask highlights (the mask is the visual
    explanation).

    Shapes: ``(B, C, H, W) -> (pooled (B, C), mask (B, 1, H, W))``.
    """

    def __init__(self, channels: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or max(channels // 4, 16)
        self.net = nn.Sequential(
            conv_bn_act(channels, hidden, 1),
            conv_bn_act(hidden, hidden, 3),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.sigmoid(self.net(f))
        pooled = (f * a).sum(dim=(2, 3)) / (a.sum(dim=(2, 3)) + 1e-6)
        return pooled, a


class DSAN(nn.Module):
    """Deeply-supervised attention network.

    Choices for details the paper leaves open:
      * backbone: ResNet-18 layout (stem + 4 stages), 224x224 input — a standard ImageNet-style
        trunk that fine-tunes from ImageNet-like initialisation and keeps side maps of 28, 14 and
        7 pixels.
      * attention blocks on the outputs of stages 2, 3, 4 (three scales: 28x28x128, 14x14x256,
        7x7x512); the trunk itself is not modified by the masks (side branches only), so the
        deepest classifier keeps the plain backbone's behaviour.
      * ensemble: learnable weights ``w = softmax(ensemble_logit_weights)`` over the three side
        classifiers, ``logits = sum_k w_k * side_logits_k`` (starts as the plain average).
      * demographic heads (gender 3, race 3, age group 5, RAF-DB's annotation sets) on the
        globally pooled stage-4 features, used in stage 1 of the two-stage scheme.
      * ``saliency``: the mean of the three attention masks upsampled (bilinear) to the input
        size, in [0, 1] — the map the pipeline's saliency stage can summarise per region.

    Args:
        num_classes: expression classes (7, RAF-DB order :data:`RAF_DB_LABELS`).
        dropout: dropout before every classifier.
    """

    side_channels = (128, 256, 512)

    def __init__(self, num_classes: int = 7, dropout: float = 0.3):
        super().__init__()
        self.stem = resnet_stem(64)
        self.layer1 = resnet_stage("basic", 64, 64, 2, 1)
        self.layer2 = resnet_stage("basic", 64, 128, 2, 2)
        self.layer3 = resnet_stage("basic", 128, 256, 2, 2)
        self.layer4 = resnet_stage("basic", 256, 512, 2, 2)
        self.attention = nn.ModuleList(AttentionBlock(c) for c in self.side_channels)
        self.side_heads = nn.ModuleList(
            nn.Sequential(nn.Dropout(dropout), nn.Linear(c, num_classes)) for c in self.side_channels)
        self.ensemble_logit_weights = nn.Parameter(torch.zeros(len(self.side_channels)))
        self.gender_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(512, len(GENDER_LABELS)))
        self.race_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(512, len(RACE_LABELS)))
        self.age_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(512, len(AGE_GROUP_LABELS)))

    def ensemble_weights(self) -> torch.Tensor:
        """``(3,)`` weights of the side outputs in the ensemble (non-negative, sum to 1)."""
        return torch.softmax(self.ensemble_logit_weights, dim=0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Classify faces. Every output has the batch as its first dimension.

        Args:
            x: ``(B, 3, H, W)`` RGB (224x224 by the card), [0, 1] then ImageNet mean/std.

        Returns:
            ``logits`` ``(B, num_classes)`` — the weighted ensemble of the side outputs;
            ``side_logits`` ``(B, 3, num_classes)`` (shallow to deep, each deeply supervised);
            ``attention1..3`` ``(B, 1, H/8, W/8)``, ``(B, 1, H/16, W/16)``,
            ``(B, 1, H/32, W/32)`` masks in [0, 1];
            ``saliency`` ``(B, 1, H, W)`` in [0, 1];
            ``gender`` ``(B, 3)``, ``race`` ``(B, 3)``, ``age`` ``(B, 5)`` demographic logits.
        """
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        side_logits = []
        masks = []
        for feat, att, head in zip((f2, f3, f4), self.attention, self.side_heads):
            pooled, mask = att(feat)
            side_logits.append(head(pooled))
            masks.append(mask)
        stacked = torch.stack(side_logits, dim=1)
        w = self.ensemble_weights()
        logits = (stacked * w.view(1, -1, 1)).sum(dim=1)
        size = (x.shape[-2], x.shape[-1])
        saliency = torch.stack([
            F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in masks
        ], dim=0).mean(dim=0)
        g = f4.mean(dim=(2, 3))
        return {
            "logits": logits,
            "side_logits": stacked,
            "attention1": masks[0],
            "attention2": masks[1],
            "attention3": masks[2],
            "saliency": saliency,
            "gender": self.gender_head(g),
            "race": self.race_head(g),
            "age": self.age_head(g),
        }


@register_model(ModelCard(
    name="dsan",
    task="expression",
    input_size=(224, 224),
    color="rgb",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    alignment="bbox",
    label_names=RAF_DB_LABELS,
    paper="Fan, Li, Lam, Facial Expression Recognition with Deeply-Supervised Attention Network, "
          "IEEE TAFFC 2020, doi:10.1109/TAFFC.2020.2988264",
    licence="Apache-2.0 (architecture code of this project; no trained weights yet)",
    weights=None,
    extra={
        "output": "logits",
        "saliency_output": "saliency",
        "output_shapes": {"logits": "(B,7)", "side_logits": "(B,3,7)",
                    "attention1": "(B,1,28,28)", "attention2": "(B,1,14,14)",
                    "attention3": "(B,1,7,7)", "saliency": "(B,1,224,224)",
                    "gender": "(B,3)", "race": "(B,3)", "age": "(B,5)"},
        "demographics": {"gender": GENDER_LABELS, "race": RACE_LABELS, "age": AGE_GROUP_LABELS},
        "feature_layers": ("layer2", "layer3", "layer4"),
    },
))
def dsan(num_classes: int = 7, dropout: float = 0.3) -> DSAN:
    """DSAN, RAF-DB 7 classes, 224x224 RGB face crop; demographic heads for two-stage training."""
    return DSAN(num_classes=num_classes, dropout=dropout)
