"""Detection: YOLO-style heads, their decoding and NMS."""

from .yolo_decode import YoloHead, activate, decode, decode_head, detect, nms

__all__ = ["YoloHead", "activate", "decode", "decode_head", "detect", "nms"]
