"""The built-in demo: a generated scene with ground truth, its clips, and mAP evaluation on them."""
