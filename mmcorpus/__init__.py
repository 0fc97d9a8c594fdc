"""mmcorpus: download and prepare the training corpora of multi-modal LLMs."""

__version__ = "0.1.0"
HOMEPAGE = "https://github.com/mmcorpus/mmcorpus"
USER_AGENT = f"mmcorpus/{__version__} (+{HOMEPAGE})"
