"""TFLite Micro target: per-operator weight loading from external flash, with generated C/C++
(docs/TFLM.md). The graph rewrite and the image writer are converters (`tflm_swap.converters.tflm`,
`.flash_image`), re-exported here.

    rewrite_for_tflm(data, ...)            graph with load operators + flash image (MicroModel)
    generate_project(micro, out, prefix)   C/C++ sources + image + example main.cc
    run_host_tflm(graph, image, inputs)    run on a real TFLM on the host (xmos-ai-tools)
    predict_arena(micro, ...)              TFLM arena the rewritten graph needs (planner link)
    export_project(model, out, ...)        all of it in one call (`convert --target tflm`) -> TflmProject
    run_example(project, x)                build the project's main.cc on the host, run it -> ExampleRun
"""

from ..converters.flash_image import build_image
from ..converters.tflm import LOAD_OP, LOAD_START_OP, LOAD_WAIT_OP, MicroModel, rewrite_for_tflm
from ..format.flash_image import ImageSegment, parse_image
from .codegen import generate_project
from .host import HostRun, run_host_tflm
from .predict import ArenaPrediction, predict_arena
from .project import ExampleRun, TflmProject, export_project, run_example

__all__ = [
    "LOAD_OP", "LOAD_START_OP", "LOAD_WAIT_OP", "ArenaPrediction", "ExampleRun", "HostRun", "ImageSegment",
    "MicroModel", "TflmProject", "build_image", "export_project", "generate_project", "parse_image",
    "predict_arena", "rewrite_for_tflm", "run_example", "run_host_tflm",
]
