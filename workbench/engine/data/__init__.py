"""Training data: read files, recognise their schema, normalise, split, tokenise and collate.

Data flows one way through the package's modules:

    readers     a file (or a folder, the demo, a hub id) -> a table of rows with line numbers
    normalise   rows -> a `Dataset` of immutable `Record`s (records.py)
    units       the neighbour-stable validation split, the per-user cap, the label set
    tokenise    `Dataset` -> `TokenizedExample`s -> `collate` -> tensors
    describe    what `workbench data PATH` shows
    demo        the built-in clinic inbox

Every problem a user can cause is a `DataError` whose message names the file, the line (or
row / column), the bad value and what to do.
"""

from workbench.engine.data.describe import describe_dataset
from workbench.engine.data.readers import load_dataset
from workbench.engine.data.records import FORMATS, IGNORE_INDEX, ROLES, SCHEMAS, DataError, Dataset, Record
from workbench.engine.data.tokenise import (
    TokenizedDataset,
    TokenizedExample,
    TokenizeStats,
    collate,
    encode_prompt,
    render_plain,
    tokenize_dataset,
)
from workbench.engine.data.units import align_labels, apply_labels, cap_per_user, check_labels, split_validation

__all__ = [
    "DataError",
    "Record",
    "Dataset",
    "SCHEMAS",
    "ROLES",
    "FORMATS",
    "IGNORE_INDEX",
    "load_dataset",
    "split_validation",
    "apply_labels",
    "cap_per_user",
    "check_labels",
    "align_labels",
    "TokenizedExample",
    "TokenizeStats",
    "TokenizedDataset",
    "tokenize_dataset",
    "encode_prompt",
    "collate",
    "describe_dataset",
    "render_plain",
]
