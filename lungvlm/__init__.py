"""LungVLM: explainable lung-nodule segmentation, risk and grounded reports from chest CT."""

__version__ = "0.1.0"
