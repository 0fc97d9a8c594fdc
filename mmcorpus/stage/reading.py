"""Reading a prepared stage from Python (DESIGN.md §6.5): `mmcorpus.open_stage(stage, root=None)`.

    stage = mmcorpus.open_stage("finetune")       # root: MMCORPUS_ROOT, else the CLI's default root
    len(stage); for sample in stage: ...          # dicts: the unified columns plus "images", absolute paths
    stage.to_hf_dataset()                         # datasets.Dataset, "images" is Sequence(Image()) and decodes
    stage.to_torch(shuffle_seed=0)                # torch IterableDataset, split across workers and ranks

Reading streams the parquet shards a row group at a time (pyarrow); no more than one row group is in memory.
`images` is built in Arrow (the images folder joined to each relative path) before rows become dicts, which
keeps iteration well above 50k samples/s (scripts/bench_read.py). `datasets` and `torch` are optional: they
are imported by the methods that need them, which name the extra to install when they are missing.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmcorpus import layout
from mmcorpus.core.atomicio import read_json
from mmcorpus.errors import UsageError



def open_stage(stage: str, root: str | Path | None = None) -> Stage:
    """The prepared stage `stage` under `root`; UsageError naming the folder and the prepare command when
    it is not prepared."""
    root = layout.resolve_root(root).absolute()
    folder = layout.stage_dir(root, stage)
    manifest = read_json(layout.stage_manifest(folder))
    if not isinstance(manifest, dict):
        raise UsageError(f"stage {stage} is not prepared: {folder} has no {layout.MANIFEST}; "
                         f"run mmcorpus prepare --stage {stage}")
    files = [layout.stage_parquet_dir(folder) / f["file"] for f in manifest["outputs"]["parquet"]["files"]]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise UsageError(f"stage {stage}: {missing[0]} is missing; run mmcorpus prepare --stage {stage} --force")
    return Stage(stage, folder, files, layout.images_root(root), manifest)


# ----------------------------------------------------------------------------------------- rows as dicts


def with_images(batch: pa.RecordBatch | pa.Table, images_root: Path) -> pa.Table:
    """The rows with an "images" column: list<string> of absolute paths ([] for text-only samples), from
    `image_paths` where the schema has it, else from `image_path`."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    prefix = str(images_root) + os.sep
    if "image_paths" in table.column_names:
        lists = table.column("image_paths").combine_chunks()
        lists = pc.if_else(pc.is_null(lists), pa.scalar([], lists.type), lists)
        joined = pc.binary_join_element_wise(prefix, pc.list_flatten(lists), "")
        images = pa.ListArray.from_arrays(_offsets(lists), joined)
    else:
        paths = table.column("image_path").combine_chunks()
        valid = paths.is_valid().to_numpy(zero_copy_only=False)
        offsets = np.concatenate([[0], np.cumsum(valid, dtype=np.int32)])
        joined = pc.binary_join_element_wise(prefix, paths.drop_null(), "")
        images = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), joined)
    return table.append_column("images", images)


def _offsets(lists: pa.ListArray) -> pa.Array:
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    return pa.array(np.concatenate([[0], np.cumsum(lengths, dtype=np.int32)]), pa.int32())


class Stage:
    """A prepared stage: its parquet shards (in the manifest's order) and where its images live."""

    def __init__(self, name: str, folder: Path, files: list[Path], images_root: Path, manifest: dict):
        self.name, self.folder, self.files, self.images_root, self.manifest = name, folder, files, images_root, manifest

    def __repr__(self) -> str:
        return f"<mmcorpus stage {self.name!r}: {len(self):,} samples in {self.folder}>"

    def __len__(self) -> int:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)

    def __iter__(self) -> Iterator[dict]:
        for path in self.files:
            parquet = pq.ParquetFile(path)
            for group in range(parquet.num_row_groups):
                yield from with_images(parquet.read_row_group(group), self.images_root).to_pylist()

    # ------------------------------------------------------------------------------- Hugging Face datasets
    def to_hf_dataset(self, **from_generator_options):
        """A `datasets.Dataset` of the samples, its "images" column `Sequence(Image())` (paths, decoded to PIL
        images when read). Built by streaming into `datasets`' cache (Dataset.from_generator; options such as
        cache_dir or keep_in_memory pass through); the stage's fingerprint keys the cache, so a rebuilt stage
        is read again."""
        try:
            import datasets
        except ImportError:
            raise UsageError("to_hf_dataset needs the datasets library: pip install 'mmcorpus[hf]'") from None
        schema = pq.read_schema(self.files[0]).remove_metadata()
        features = datasets.Features.from_arrow_schema(schema)
        features["images"] = datasets.Sequence(datasets.Image())
        kwargs = {"files": [str(f) for f in self.files], "images_root": str(self.images_root),
                  "fingerprint": self.manifest.get("fingerprint")}
        return datasets.Dataset.from_generator(_hf_rows, features=features, gen_kwargs=kwargs,
                                               **from_generator_options)

    # ------------------------------------------------------------------------------------------- torch
    def to_torch(self, shuffle_seed: int | None = None, transform: Callable[[dict], object] | None = None):
        """A torch IterableDataset of the samples (dicts as in iteration, or `transform(sample)`, e.g. to
        decode the images in the DataLoader's workers). Each (rank, worker) reads its own pieces of the row
        groups, so no sample is read twice; with `shuffle_seed`, the pieces and the rows within each are
        shuffled by the seed (call `set_epoch(n)` for another order each epoch)."""
        try:
            import torch.utils.data  # noqa: F401 (the check that the extra is installed)
        except ImportError:
            raise UsageError("to_torch needs torch: pip install 'mmcorpus[torch]'") from None
        units = row_group_units([pq.ParquetFile(f).metadata for f in self.files])
        return _torch_stage(self.files, self.images_root, units, shuffle_seed, transform, 0)


def _hf_rows(files: list[str], images_root: str, fingerprint: str | None) -> Iterator[dict]:
    """The generator of to_hf_dataset (module level: `datasets` hashes it and its arguments for the cache)."""
    root = Path(images_root)
    for path in files:
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            yield from with_images(parquet.read_row_group(group), root).to_pylist()


# ---------------------------------------------------------------------------------- torch: who reads what


class Unit(NamedTuple):
    """Rows [start, stop) of row group `group` of shard `file`: what one (rank, worker) reads at a time."""

    file: int
    group: int
    start: int
    stop: int


def row_group_units(metadatas: list[pq.FileMetaData]) -> list[Unit]:
    return [Unit(f, g, 0, meta.row_group(g).num_rows) for f, meta in enumerate(metadatas)
            for g in range(meta.num_row_groups) if meta.row_group(g).num_rows]


def assign(units: list[Unit], readers: int, reader: int, seed: int | None, epoch: int = 0) -> list[Unit]:
    """The units reader `reader` of `readers` (rank * workers + worker) reads: every row once over all readers.
    Whole row groups when there are at least as many as readers; else each is cut into `readers` pieces, so
    a small stage still feeds every worker. With a seed, the units come in a seeded order (the same in every
    process, so the split stays disjoint)."""
    if len(units) < readers:
        units = [Unit(u.file, u.group, u.start + (u.stop - u.start) * i // readers,
                      u.start + (u.stop - u.start) * (i + 1) // readers) for u in units for i in range(readers)]
        units = [u for u in units if u.stop > u.start]
    if seed is not None:
        units = units[:]
        random.Random(f"{seed}:{epoch}").shuffle(units)
    return units[reader::readers]


def _readers() -> tuple[int, int]:
    """(this reader's index, readers in all) over distributed ranks x DataLoader workers."""
    import torch.distributed as dist
    from torch.utils.data import get_worker_info

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:  # torchrun sets these before the process group exists
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world * workers


class TorchStage:
    """The body of to_torch's IterableDataset (the class itself is made with torch's base class when torch
    is first asked for, so that importing mmcorpus never imports torch)."""

    def __init__(self, files: list[Path], images_root: Path, units: list[Unit], seed: int | None,
                 transform: Callable[[dict], object] | None, epoch: int):
        self.files, self.images_root, self.units = files, images_root, units
        self.seed, self.transform, self.epoch = seed, transform, epoch

    def set_epoch(self, epoch: int) -> None:
        """Another seeded order for the next pass (as DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator:
        reader, readers = _readers()
        for unit in assign(self.units, readers, reader, self.seed, self.epoch):
            table = pq.ParquetFile(self.files[unit.file]).read_row_group(unit.group)
            rows = with_images(table.slice(unit.start, unit.stop - unit.start), self.images_root).to_pylist()
            if self.seed is not None:
                random.Random(f"{self.seed}:{self.epoch}:{unit}").shuffle(rows)
            yield from (map(self.transform, rows) if self.transform else rows)

    def __reduce__(self):  # DataLoader workers started by spawn get it pickled: rebuild through torch's class
        return _torch_stage, (self.files, self.images_root, self.units, self.seed, self.transform, self.epoch)


@functools.cache
def _torch_class() -> type:
    from torch.utils.data import IterableDataset

    return type("TorchStage", (TorchStage, IterableDataset), {"__module__": __name__})


def _torch_stage(*args) -> TorchStage:
    return _torch_class()(*args)
