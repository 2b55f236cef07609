"""TFLite Micro target: per-operator weight loading from external flash, with generated C/C++.

    rewrite_for_tflm(data, ...)            graph with load operators + flash image (MicroModel)
    generate_project(micro, out, prefix)   C/C++ sources + image + example main.cc
    run_host_tflm(graph, image, inputs)    run on a real TFLM on the host (xmos-ai-tools)
    predict_arena(micro, ...)              TFLM arena the rewritten graph needs (planner link)
"""

from .codegen import generate_project
from .host import HostRun, run_host_tflm
from .image import ImageSegment, build_image, parse_image
from .predict import ArenaPrediction, predict_arena
from .rewrite import LOAD_OP, LOAD_START_OP, LOAD_WAIT_OP, MicroModel, rewrite_for_tflm

__all__ = [
    "LOAD_OP", "LOAD_START_OP", "LOAD_WAIT_OP", "ArenaPrediction", "HostRun", "ImageSegment", "MicroModel",
    "build_image", "generate_project", "parse_image", "predict_arena", "rewrite_for_tflm", "run_host_tflm",
]
