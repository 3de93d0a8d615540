"""Train the built-in demo detector on procedurally generated scenes (dev only).

Reproducible: every random draw comes from --seed. Needs torch (CPU build):
    pip install torch==2.13.0 onnx
    python training/train_demo.py --out engines/models/demo.onnx

The network is a small anchor-free detector with one stride-8 output. Its ONNX
export decodes to the YOLOv8 layout `[batch, 4 + classes, anchors]` (cx, cy, w, h
in input pixels, then sigmoid class scores) with Ultralytics-style metadata, so
the agent runs it exactly as it runs an Ultralytics model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.demo.scene import CLASS_NAMES, SceneGenerator
from engines.letterbox import LetterboxWriter

INPUT_H, INPUT_W, STRIDE = 192, 320, 8
TRAIN_SEED_BASE = 100_000  # held-out clips use seeds far below this


def conv(c_in: int, c_out: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class DemoNet(nn.Module):
    """Backbone to stride 32, a small top-down neck, one stride-8 head."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.nc = num_classes
        self.s4 = nn.Sequential(conv(3, 16, 3, 2), conv(16, 32, 3, 2))
        self.s8 = nn.Sequential(conv(32, 48, 3, 2), conv(48, 48))
        self.s16 = nn.Sequential(conv(48, 64, 3, 2), conv(64, 64))
        self.s32 = nn.Sequential(conv(64, 96, 3, 2), conv(96, 96))
        self.n16 = conv(96 + 64, 64)
        self.n8 = nn.Sequential(conv(64 + 48, 64, 1), conv(64, 64))
        self.box = nn.Conv2d(64, 4, 1)
        self.cls = nn.Conv2d(64, num_classes, 1)
        nn.init.constant_(self.cls.bias, -4.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p8 = self.s8(self.s4(x))
        p16 = self.s16(p8)
        p32 = self.s32(p16)
        n16 = self.n16(torch.cat([F.interpolate(p32, scale_factor=2.0, mode="nearest"), p16], 1))
        n8 = self.n8(torch.cat([F.interpolate(n16, scale_factor=2.0, mode="nearest"), p8], 1))
        ltrb = F.softplus(self.box(n8)) * STRIDE  # distances in input pixels
        return ltrb.flatten(2), self.cls(n8).flatten(2)  # [B,4,N], [B,nc,N] logits


def anchor_centers(h: int, w: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h // STRIDE), torch.arange(w // STRIDE), indexing="ij")
    return torch.stack([(xs.flatten() + 0.5) * STRIDE, (ys.flatten() + 0.5) * STRIDE], 1).float()


class Exported(nn.Module):
    """Adds YOLOv8-style decoding so the ONNX output is [B, 4+nc, N]."""

    def __init__(self, net: DemoNet) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("centers", anchor_centers(INPUT_H, INPUT_W).T.unsqueeze(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ltrb, logits = self.net(x)
        x1y1 = self.centers - ltrb[:, :2]
        x2y2 = self.centers + ltrb[:, 2:]
        return torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1, logits.sigmoid()], 1)


def box_iou_giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise IoU and GIoU of x1y1x2y2 boxes."""
    iw = (torch.min(a[:, 2], b[:, 2]) - torch.max(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.min(a[:, 3], b[:, 3]) - torch.max(a[:, 1], b[:, 1])).clamp(min=0)
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    iou = inter / union.clamp(min=1e-6)
    cw = torch.max(a[:, 2], b[:, 2]) - torch.min(a[:, 0], b[:, 0])
    ch = torch.max(a[:, 3], b[:, 3]) - torch.min(a[:, 1], b[:, 1])
    hull = (cw * ch).clamp(min=1e-6)
    return iou, iou - (hull - union) / hull


def assign(centers: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Index of the ground-truth box each anchor learns (-1: background).

    Positives: anchors inside a box and within 2.5 strides of its centre, plus the
    anchor nearest the centre (so small objects always get one); the smallest box
    wins where they overlap.
    """
    n = centers.shape[0]
    if boxes.numel() == 0:
        return torch.full((n,), -1, dtype=torch.long)
    cx, cy = centers[:, :1], centers[:, 1:]
    inside = (cx > boxes[:, 0]) & (cx < boxes[:, 2]) & (cy > boxes[:, 1]) & (cy < boxes[:, 3])
    gcx, gcy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    dist = ((cx - gcx) ** 2 + (cy - gcy) ** 2).sqrt()
    pos = inside & (dist < 2.5 * STRIDE)
    pos[dist.argmin(0), torch.arange(boxes.shape[0])] = True
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).expand(n, -1)
    cost = torch.where(pos, area, torch.full_like(area, float("inf")))
    best = cost.argmin(1)
    return torch.where(pos.any(1), best, torch.full_like(best, -1))


def make_dataset(seed: int, scenes: int, per_scene: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Letterboxed frames (uint8 NHWC) and their boxes/classes in input pixels."""
    rng = np.random.default_rng(seed)
    writer = LetterboxWriter(1, INPUT_H, INPUT_W)
    images = np.empty((scenes * per_scene, INPUT_H, INPUT_W, 3), np.uint8)
    targets: list[np.ndarray] = []
    k = 0
    for s in range(scenes):
        gen = SceneGenerator(seed=TRAIN_SEED_BASE + seed * 10_000 + s)
        for _ in range(per_scene):
            gen.skip(int(rng.integers(0, 12)))
            frame, truths = gen.next_frame()
            if rng.uniform() < 0.7:  # the demo clips are lossy video: learn through artefacts
                q = int(rng.integers(30, 95))
                frame = cv2.imdecode(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, q])[1], 1)
            lb = writer.write(0, frame)
            images[k] = (writer.tensor[0].transpose(1, 2, 0)[..., ::-1] * 255 + 0.5).astype(np.uint8)
            rows = [
                [t.box[0] * lb.scale + lb.pad_x, t.box[1] * lb.scale + lb.pad_y,
                 t.box[2] * lb.scale + lb.pad_x, t.box[3] * lb.scale + lb.pad_y, t.class_id]
                for t in truths
            ]
            targets.append(np.asarray(rows, np.float32).reshape(-1, 5))
            k += 1
    return images, targets


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC BGR -> float NCHW RGB in [0, 1], as the agent pre-processes."""
    return torch.from_numpy(images[..., ::-1].copy()).permute(0, 3, 1, 2).float().div_(255)


def train(args: argparse.Namespace) -> DemoNet:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    images, targets = make_dataset(args.seed, args.scenes, args.per_scene)
    print(f"dataset: {len(images)} frames in {time.time() - t0:.0f}s", flush=True)
    nc = len(CLASS_NAMES)
    model = DemoNet(nc)
    centers = anchor_centers(INPUT_H, INPUT_W)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    model.train()
    t0 = time.time()
    for step in range(args.steps):
        idx = rng.integers(0, len(images), args.batch)
        x = to_tensor(images[idx])
        boxes = [targets[i].copy() for i in idx]
        if rng.uniform() < 0.5:  # horizontal flip of the whole batch
            x = x.flip(3)
            for b in boxes:
                b[:, [0, 2]] = INPUT_W - b[:, [2, 0]]
        ltrb, logits = model(x)
        cls_target = torch.zeros_like(logits)
        box_losses, num_pos = [], 0
        for i, b in enumerate(boxes):
            gt = torch.from_numpy(b)
            match = assign(centers, gt[:, :4])
            pos = match >= 0
            if not pos.any():
                continue
            c = centers[pos]
            pred = torch.cat([c - ltrb[i, :2, pos].T, c + ltrb[i, 2:, pos].T], 1)
            g = gt[match[pos]]
            iou, giou = box_iou_giou(pred, g[:, :4])
            box_losses.append((1 - giou).sum())
            num_pos += int(pos.sum())
            cls_target[i, g[:, 4].long(), pos.nonzero().squeeze(1)] = iou.detach().clamp(min=0.05)
        norm = max(num_pos, 1)
        cls_loss = F.binary_cross_entropy_with_logits(logits, cls_target, reduction="sum") / norm
        box_loss = torch.stack(box_losses).sum() / norm if box_losses else logits.sum() * 0
        loss = cls_loss + 2.5 * box_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            rate = (step + 1) * args.batch / (time.time() - t0)
            print(f"step {step}/{args.steps} loss {loss.item():.3f} cls {cls_loss.item():.3f} "
                  f"box {box_loss.item():.3f} ({rate:.0f} img/s)", flush=True)
    return model


def export(model: DemoNet, out: Path, args: argparse.Namespace) -> None:
    import onnx

    model.eval()
    wrapped = Exported(model).eval()
    dummy = torch.zeros(1, 3, INPUT_H, INPUT_W)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        wrapped, dummy, str(out), input_names=["images"], output_names=["output0"],
        dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}}, opset_version=17, dynamo=False,
    )
    proto = onnx.load(str(out))
    dims = proto.graph.output[0].type.tensor_type.shape.dim  # the exporter leaves these symbolic
    dims[1].dim_value = 4 + model.nc
    dims[2].dim_value = (INPUT_H // STRIDE) * (INPUT_W // STRIDE)
    meta = {
        "description": "edge-agent demo detector (shapes), trained on procedural scenes",
        "author": "edge-agent",
        "task": "detect",
        "stride": str(STRIDE),
        "imgsz": str([INPUT_H, INPUT_W]),
        "names": str(dict(enumerate(CLASS_NAMES))),  # Ultralytics writes a Python dict literal
        "training": json.dumps({"seed": args.seed, "steps": args.steps, "scenes": args.scenes,
                                "per_scene": args.per_scene, "batch": args.batch}),
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(out))
    print(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("engines/models/demo.onnx"))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--scenes", type=int, default=3000)
    p.add_argument("--per-scene", type=int, default=6)
    p.add_argument("--steps", type=int, default=14000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    model = train(args)
    export(model, args.out, args)


if __name__ == "__main__":
    main()
