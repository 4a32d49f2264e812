"""QCNet: a small encoder-decoder with a view head, in depth x width variants (DESIGN §5).

The study's ChestPAQC_{10,15,20}_{1,3} grid is kept: ``depth`` is the number of conv blocks
on the encoder-decoder path, ``width`` the number of parallel branches per block with
different receptive fields (kernel 3, 5, 7 realised as dilated 3x3 convolutions with
dilation 1, 2, 3, which costs a third of true 5x5/7x7 kernels on a CPU).

Outputs: one mask logit per channel (STRUCTURES, optionally + VISIBLE_LUNGS; a sigmoid per
structure: structures overlap in projection, so not a softmax) at input resolution, and 3
view logits (frontal / lateral / other) from the bottleneck.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qcnode.records import STRUCTURES, View

VIEWS: tuple[View, ...] = (View.FRONTAL, View.LATERAL, View.OTHER)
CHANNELS: tuple[int, ...] = (16, 32, 48, 64, 96)  # per level: 128², 64², 32², 16², 8²
HEAD_CHANNELS = 16  # features feeding the 16 mask logits
# Features of the optional refiner (single-branch blocks: +3 ms per frontal on 2 cores,
# where 32 features or 2 branches cost +9 ms).
REFINE_CHANNELS = 16

# Encoder blocks per level below the stem; decoder has one block per level (4) and the stem
# one more, so depth = 1 + sum(encoder) + 4.
_ENCODER_BLOCKS: dict[int, tuple[int, ...]] = {
    10: (1, 1, 1, 2),
    15: (1, 2, 3, 4),
    20: (2, 3, 4, 6),
}
_NAME = re.compile(r"^qcnet_d(\d+)_w(\d+)$")


@dataclass(frozen=True)
class VariantSpec:
    name: str
    depth: int
    width: int
    encoder_blocks: tuple[int, ...]
    channels: tuple[int, ...] = CHANNELS


def variant_names() -> list[str]:
    return [f"qcnet_d{d}_w{w}" for d in sorted(_ENCODER_BLOCKS) for w in (1, 3)]


def parse_variant(name: str) -> VariantSpec:
    """``qcnet_d15_w3`` -> its spec; ValueError for a name outside the grid."""
    m = _NAME.match(name)
    if not m or int(m.group(1)) not in _ENCODER_BLOCKS or int(m.group(2)) not in (1, 2, 3):
        raise ValueError(f"unknown model variant {name!r}; known: {', '.join(variant_names())}")
    depth, width = int(m.group(1)), int(m.group(2))
    return VariantSpec(name=name, depth=depth, width=width, encoder_blocks=_ENCODER_BLOCKS[depth])


class Block(nn.Module):
    """Parallel dilated 3x3 branches summed, BatchNorm, ReLU; residual when shapes match."""

    def __init__(self, cin: int, cout: int, *, width: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(cin, cout, 3, padding=d, dilation=d, bias=False) for d in range(1, width + 1)
        )
        self.norm = nn.BatchNorm2d(cout)
        self.residual = cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branches[0](x)
        for branch in self.branches[1:]:
            y = y + branch(x)
        y = F.relu(self.norm(y))
        return x + y if self.residual else y


class Refiner(nn.Module):
    """A second last-level decoder path for a few thin structures (scapulae, clavicles,
    posterior ribs), added to the base logits of those channels.

    The base network's last block squeezes every structure through HEAD_CHANNELS features;
    the refiner gives the chosen ones their own, wider features from the same inputs plus
    the base logits. Its output convolution starts at zero, so a fresh refiner changes
    nothing, and training it alone on a frozen network leaves every other channel
    bit-identical (``Recipe.train_only = "refine"``)."""

    def __init__(self, *, cin: int, channels: Sequence[int], hidden: int = REFINE_CHANNELS) -> None:
        super().__init__()
        self.register_buffer("index", torch.tensor(list(channels), dtype=torch.long))
        k = len(channels)
        self.body = nn.Sequential(Block(cin + k, hidden, width=1), Block(hidden, hidden, width=1))
        self.out = nn.Conv2d(hidden, k, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)  # type: ignore[arg-type]

    @property
    def channels(self) -> torch.Tensor:
        """Indices of the refined mask channels."""
        index: torch.Tensor = self.index  # type: ignore[assignment]
        return index

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        index = self.channels
        base = logits.index_select(1, index)
        delta = self.out(self.body(torch.cat([features, base], dim=1)))
        return logits.index_add(1, index, delta)


class QCNet(nn.Module):
    """U-Net-like: a stride-2 stem, 4 downsampling levels, 4 decoder levels, logits
    upsampled 2x (bilinear) to the input size.

    Working at half the input resolution (3.5 mm at the default scale) costs a quarter of
    the memory traffic that dominates CPU time; interpolating the logits, not thresholded
    masks, keeps contours smooth and sub-pixel.
    """

    def __init__(
        self,
        *,
        spec: VariantSpec,
        in_channels: int = 1,
        structures: tuple[str, ...] = STRUCTURES,
        refine: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.spec = spec
        self.structures = structures
        ch, w = spec.channels, spec.width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, ch[0], 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(ch[0]),
            nn.ReLU(inplace=True),
            Block(ch[0], ch[0], width=w),
        )
        self.down = nn.ModuleList()
        for level, n in enumerate(spec.encoder_blocks, start=1):
            blocks = [Block(ch[level - 1], ch[level], width=w)]
            blocks += [Block(ch[level], ch[level], width=w) for _ in range(n - 1)]
            self.down.append(nn.Sequential(*blocks))
        # Decoder blocks are single-branch: the multi-scale branches pay off in the encoder,
        # and the full-resolution decoder is where a CPU spends its time.
        self.up = nn.ModuleList(
            Block(ch[level + 1] + ch[level], HEAD_CHANNELS if level == 0 else ch[level], width=1)
            for level in reversed(range(len(spec.encoder_blocks)))
        )
        self.masks = nn.Conv2d(HEAD_CHANNELS, len(structures), 1)
        self.view = nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * ch[-1], len(VIEWS)))
        unknown = [n for n in refine if n not in structures]
        if unknown:
            raise ValueError(f"refine names structures the network does not output: {unknown}")
        self.refine = refine
        self.refiner = (
            Refiner(cin=ch[1] + ch[0], channels=[structures.index(n) for n in refine])
            if refine
            else None
        )

    def forward(
        self, x: torch.Tensor, *, upsample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits (B, C, H, W) — (B, C, H/2, W/2) with ``upsample=False``, which
        training uses against area-averaged targets — and view logits (B, 3)."""
        skips = self._encode(x)
        h = skips[-1]
        view_logits = self._view(h)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            last_input = torch.cat([h, skip], dim=1)
            h = block(last_input)
        logits = self.masks(h)
        if self.refiner is not None:
            logits = self.refiner(last_input, logits)
        if upsample:
            logits = F.interpolate(logits, scale_factor=2, mode="bilinear", align_corners=False)
        return logits, view_logits

    def view_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The view logits alone: the encoder and the view head, no decoder (a third of the
        network's time), for training the view head on a frozen encoder."""
        return self._view(self._encode(x)[-1])

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = [self.stem(x)]
        for stage in self.down:
            skips.append(stage(F.max_pool2d(skips[-1], 2)))
        return skips

    def _view(self, h: torch.Tensor) -> torch.Tensor:
        return self.view(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))


class LogitMean(nn.Module):
    """An ensemble of QCNets: the mean of their mask logits and of their view logits, before
    any sigmoid/softmax, so everything downstream sees one network's outputs. Members must
    have the same mask channels (checked here) and input scale (checked by the loader)."""

    def __init__(self, *, members: Sequence[QCNet]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        channels = {m.structures for m in members}
        if len(channels) != 1:
            raise ValueError(f"ensemble members have different mask channels: {channels}")
        self.members = nn.ModuleList(members)
        self.structures: tuple[str, ...] = members[0].structures

    def forward(
        self, x: torch.Tensor, *, upsample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        masks, views = self.members[0](x, upsample=upsample)
        for member in self.members[1:]:
            m, v = member(x, upsample=upsample)
            masks, views = masks + m, views + v
        n = len(self.members)
        return (masks, views) if n == 1 else (masks / n, views / n)


def build(
    name: str, structures: tuple[str, ...] = STRUCTURES, refine: tuple[str, ...] = ()
) -> QCNet:
    return QCNet(spec=parse_variant(name), structures=structures, refine=refine)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
