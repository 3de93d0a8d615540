"""Build a YOLOv8n-sized detector with random weights and export it like Ultralytics does (dev only).

Why: the benchmarks need a model with the cost of a real YOLOv8n (about 3.15M parameters,
8.7 GFLOPs at 640), but this project cannot download weights and does not depend on
Ultralytics. This script rebuilds the YOLOv8n architecture (depth 0.33, width 0.25: Conv+BN+SiLU,
C2f, SPPF, PAN neck, Detect head with DFL at strides 8/16/32, 80 classes) in plain PyTorch,
seeds random weights, and writes an ONNX file in Ultralytics' detection export format:

    input  `images`  float32 [1, 3, H, W]        (`--dynamic-batch`: dim 0 is `batch`)
    output `output0` float32 [1, 84, anchors]    rows 0-3 cx, cy, w, h in input pixels,
                                                 rows 4-83 sigmoid class scores
    metadata: description, author, date, version, license, docs, stride, task, batch,
              imgsz, names (a Python dict literal of the 80 COCO names), args

Architecture only: the weights are random and the output is meaningless, so use it for timing
and plumbing, never for accuracy. The class biases start at -8 so the scores stay tiny and do not
flood NMS.

    pip install torch==2.13.0 onnx
    python benchmarks/make_yolov8n_like.py --out /tmp/yolov8n_like.onnx
"""

from __future__ import annotations

import argparse
import datetime
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip

STRIDES = (8, 16, 32)
REG_MAX = 16
CLS_BIAS = -8.0  # sigmoid(-8) ≈ 3e-4: random features stay far below any sane score threshold
OPSET = 17
FORMAT_VERSION = "8.3.0"  # the Ultralytics release whose export format this mimics


class Conv(nn.Module):
    """Ultralytics `Conv`: Conv2d (no bias) + BatchNorm + SiLU, 'same' padding."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> None:
        """Fold BatchNorm into the conv, as Ultralytics does before export."""
        self.conv = fuse_conv_bn_eval(self.conv, self.bn)
        self.bn = nn.Identity()


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, c_out: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = Conv(c_in, c_out, 3)
        self.cv2 = Conv(c_out, c_out, 3)
        self.add = shortcut and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP bottleneck with two convolutions and `n` bottlenecks whose outputs are all concatenated."""

    def __init__(self, c_in: int, c_out: int, n: int, shortcut: bool) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1 = Conv(c_in, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c_out, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max-pools, concatenated."""

    def __init__(self, c_in: int, c_out: int, k: int = 5) -> None:
        super().__init__()
        c_hidden = c_in // 2
        self.cv1 = Conv(c_in, c_hidden, 1)
        self.cv2 = Conv(4 * c_hidden, c_out, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss decoding: expectation of a softmax over `reg_max` bins (fixed 1x1 conv)."""

    def __init__(self, reg_max: int = REG_MAX) -> None:
        super().__init__()
        self.reg_max = reg_max
        self.conv = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape  # x: [b, 4 * reg_max, anchors]
        return self.conv(x.view(b, 4, self.reg_max, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class Detect(nn.Module):
    """YOLOv8 anchor-free head; returns the decoded [b, 4 + nc, anchors] tensor Ultralytics exports."""

    def __init__(self, nc: int, ch: Sequence[int], strides: Sequence[int] = STRIDES) -> None:
        super().__init__()
        self.nc = nc
        self.strides = tuple(strides)
        c2 = max(16, ch[0] // 4, REG_MAX * 4)
        c3 = max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * REG_MAX, 1)) for c in ch
        )
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for c in ch)
        self.dfl = DFL(REG_MAX)

    def init_biases(self, cls_bias: float) -> None:
        for box, cls in zip(self.cv2, self.cv3):
            nn.init.constant_(box[-1].bias, 1.0)  # as Ultralytics' bias_init
            nn.init.constant_(cls[-1].bias, cls_bias)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        b = feats[0].shape[0]
        outs, anchors, strides = [], [], []
        for i, (x, s) in enumerate(zip(feats, self.strides)):
            outs.append(torch.cat((self.cv2[i](x), self.cv3[i](x)), 1).view(b, 4 * REG_MAX + self.nc, -1))
            h, w = x.shape[2:]
            ys = torch.arange(h, dtype=x.dtype) + 0.5  # anchor points at cell centres (make_anchors)
            xs = torch.arange(w, dtype=x.dtype) + 0.5
            sy, sx = torch.meshgrid(ys, xs, indexing="ij")
            anchors.append(torch.stack((sx, sy), -1).view(-1, 2))
            strides.append(torch.full((h * w, 1), float(s), dtype=x.dtype))
        anchor_points = torch.cat(anchors).transpose(0, 1).unsqueeze(0)  # [1, 2, anchors]
        stride_t = torch.cat(strides).transpose(0, 1).unsqueeze(0)  # [1, 1, anchors]
        y = torch.cat(outs, 2)
        box, cls = y.split((4 * REG_MAX, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)  # dist2bbox(..., xywh=True)
        x1y1, x2y2 = anchor_points - lt, anchor_points + rb
        xywh = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * stride_t
        return torch.cat((xywh, cls.sigmoid()), 1)


class YOLOv8(nn.Module):
    """YOLOv8 detection model at a given scale; defaults are the 'n' scale (16/32/64/128/256 channels)."""

    def __init__(self, nc: int = 80, depth: float = 0.33, width: float = 0.25, max_channels: int = 1024) -> None:
        super().__init__()

        def ch(c: int) -> int:
            return math.ceil(min(c, max_channels) * width / 8) * 8

        def n(r: int) -> int:
            return max(round(r * depth), 1)

        c1, c2, c3, c4, c5 = ch(64), ch(128), ch(256), ch(512), ch(1024)
        # backbone
        self.b0 = Conv(3, c1, 3, 2)  # P1/2
        self.b1 = Conv(c1, c2, 3, 2)  # P2/4
        self.b2 = C2f(c2, c2, n(3), True)
        self.b3 = Conv(c2, c3, 3, 2)  # P3/8
        self.b4 = C2f(c3, c3, n(6), True)
        self.b5 = Conv(c3, c4, 3, 2)  # P4/16
        self.b6 = C2f(c4, c4, n(6), True)
        self.b7 = Conv(c4, c5, 3, 2)  # P5/32
        self.b8 = C2f(c5, c5, n(3), True)
        self.b9 = SPPF(c5, c5, 5)
        # PAN neck
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.h12 = C2f(c5 + c4, c4, n(3), False)
        self.h15 = C2f(c4 + c3, c3, n(3), False)  # P3 out
        self.h16 = Conv(c3, c3, 3, 2)
        self.h18 = C2f(c3 + c4, c4, n(3), False)  # P4 out
        self.h19 = Conv(c4, c4, 3, 2)
        self.h21 = C2f(c4 + c5, c5, n(3), False)  # P5 out
        self.detect = Detect(nc, (c3, c4, c5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        h12 = self.h12(torch.cat((self.up(p5), p4), 1))
        h15 = self.h15(torch.cat((self.up(h12), p3), 1))
        h18 = self.h18(torch.cat((self.h16(h15), h12), 1))
        h21 = self.h21(torch.cat((self.h19(h18), p5), 1))
        return self.detect([h15, h18, h21])

    def fuse(self) -> YOLOv8:
        for m in self.modules():
            if isinstance(m, Conv):
                m.fuse()
        return self


def build(seed: int, nc: int = len(COCO_NAMES)) -> YOLOv8:
    torch.manual_seed(seed)
    model = YOLOv8(nc)
    model.detect.init_biases(CLS_BIAS)
    return model.eval()


def export(model: YOLOv8, out: Path, imgsz: int, dynamic_batch: bool) -> None:
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = {"images": {0: "batch"}, "output0": {0: "batch"}} if dynamic_batch else None
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, imgsz, imgsz),),
            str(out),
            input_names=["images"],
            output_names=["output0"],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(out))
    # With a symbolic batch the tracer leaves every output dim symbolic; only dim 0 really is.
    anchors = sum((imgsz // s) ** 2 for s in model.detect.strides)
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    out_dims[1].dim_value, out_dims[2].dim_value = 4 + model.detect.nc, anchors
    meta = {
        "description": "YOLOv8n-like model with random weights (edge-agent benchmarks; architecture only, untrained)",
        "author": "edge-agent benchmarks/make_yolov8n_like.py",
        "date": datetime.datetime.now().isoformat(),
        "version": FORMAT_VERSION,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "stride": str(max(STRIDES)),
        "task": "detect",
        "batch": "1",
        "imgsz": str([imgsz, imgsz]),
        "names": str(dict(enumerate(COCO_NAMES))),  # Ultralytics writes a Python dict literal
        "args": str({"batch": 1, "half": False, "dynamic": dynamic_batch, "simplify": False, "opset": OPSET}),
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="where to write the .onnx file")
    p.add_argument("--imgsz", type=int, default=640, help="square input size, a multiple of 32 (default 640)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random weights (default 0)")
    p.add_argument("--dynamic-batch", action="store_true", help="make dim 0 of input and output symbolic `batch`")
    args = p.parse_args()
    if args.imgsz <= 0 or args.imgsz % max(STRIDES):
        p.error(f"--imgsz must be a positive multiple of {max(STRIDES)}")

    model = build(args.seed)
    params = sum(t.numel() for t in model.parameters())
    anchors = sum((args.imgsz // s) ** 2 for s in STRIDES)
    print(f"YOLOv8n-like: {params:,} parameters, output [1, {4 + len(COCO_NAMES)}, {anchors}]")
    export(model.fuse(), args.out, args.imgsz, args.dynamic_batch)
    print(f"exported {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
