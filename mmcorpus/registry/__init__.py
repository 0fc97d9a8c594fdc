"""The registry: one YAML spec per dataset and per image collection (DESIGN.md §1).

Built-in specs live in the repository's `configs/` (shipped as `mmcorpus.builtin_configs`); users add or
override specs from their own folders (`--config-dir`, `MMCORPUS_CONFIG_DIR`), searched after the built-ins.
Specs are user-written files, so loading is strict: an unknown key or a wrong type is an error naming the
file and the key path, never a silent default.

    spec.py     the spec types (Spec, FileSpec) and the registry's vocabularies (stages, format types)
    fields.py   typed, checked access to a YAML mapping (Fields, as_str, one_of, ...)
    parse.py    a spec's YAML -> Spec
    load.py     where specs are found, Registry
"""

from mmcorpus.registry.fields import (
    Fields,
    as_bool,
    as_int,
    as_str,
    as_str_list,
    one_of,
)
from mmcorpus.registry.load import (
    Registry,
    builtin_config_dir,
    config_dirs,
    did_you_mean,
    load_spec_file,
    read_yaml,
    spec_to_dict,
)
from mmcorpus.registry.parse import parse_spec
from mmcorpus.registry.spec import (
    FILE_ROLES,
    FORMAT_TYPES,
    NAME_RE,
    STAGES,
    FileSpec,
    Spec,
)

__all__ = [
    "FILE_ROLES",
    "FORMAT_TYPES",
    "NAME_RE",
    "STAGES",
    "Fields",
    "FileSpec",
    "Registry",
    "Spec",
    "as_bool",
    "as_int",
    "as_str",
    "as_str_list",
    "builtin_config_dir",
    "config_dirs",
    "did_you_mean",
    "load_spec_file",
    "one_of",
    "parse_spec",
    "read_yaml",
    "spec_to_dict",
]
