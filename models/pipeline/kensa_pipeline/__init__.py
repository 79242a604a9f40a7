"""kensa model pipeline: synthetic AOI data, PFA + CMAF classifier, ONNX export.

The method follows Hsu et al., "Progressive Alignment with VLM-LLM Feature to Augment
Defect Classification for the ASE Dataset" (arXiv 2404.05183).
"""

__version__ = "0.1.0"
