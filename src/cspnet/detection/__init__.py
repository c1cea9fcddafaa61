"""Detection: the one-stage detectors of the paper as native models (:mod:`.zoo`: a zoo backbone,
a neck from :mod:`.necks` or :mod:`.fusion`, YOLO outputs from :mod:`.head`, put together by
:class:`Detector`), darknet-compatible decoding and NMS (:mod:`.yolo_decode`), COCO evaluation
(:mod:`.evaluate`), the detection task of the engine (:mod:`.task`), ONNX export with the decode
in the graph (:mod:`.export`) and the activation-memory measure of the EFM's Maxout (:mod:`.memory`).

The detectors are registered in the model zoo: ``cspnet.create_model("yolov3_tiny_prn")``.
"""

from .detector import Detector
from .evaluate import CocoEvaluator
from .export import DecodedDetector, export_detector
from .fusion import EFM, GFM, AttentionNeck
from .necks import FPN, PRN, PANet
from .yolo_decode import YoloHead, activate, decode, decode_head, detect, nms
from .zoo import DetectorCfg, build_detector

__all__ = [
    "EFM",
    "FPN",
    "GFM",
    "PRN",
    "AttentionNeck",
    "CocoEvaluator",
    "DecodedDetector",
    "Detector",
    "DetectorCfg",
    "PANet",
    "YoloHead",
    "activate",
    "build_detector",
    "decode",
    "decode_head",
    "detect",
    "export_detector",
    "nms",
]
