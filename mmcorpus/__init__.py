"""mmcorpus: download and prepare the training corpora of multi-modal LLMs.

`mmcorpus.open_stage(stage, root=None)` reads a prepared stage (mmcorpus.stage.reading). It is loaded on first
use (a module `__getattr__`): the reader needs pyarrow, which would triple the time of `mmcorpus --help`, and
the CLI imports this package for every command.
"""

__version__ = "0.1.0"
HOMEPAGE = "https://github.com/mmcorpus/mmcorpus"
USER_AGENT = f"mmcorpus/{__version__} (+{HOMEPAGE})"
__all__ = ["__version__", "open_stage"]


def __getattr__(name: str):
    if name == "open_stage":
        from mmcorpus.stage.reading import open_stage

        return open_stage
    raise AttributeError(f"module 'mmcorpus' has no attribute {name!r}")
