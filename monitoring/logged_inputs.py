"""A day of a model's logged inputs as a frame of feature columns, one row per request row.

The prediction log's ``inputs`` column is the canonical JSON of :mod:`serving.protocol.render`:
``{"inputs":[{"name","datatype","shape","data"}],"features":{..}}``, the request *as the model
saw it* (KServe v1 records already in its feature order, entity lookups already filled in), so
a tabular model's request is one ``[N, F]`` tensor whose ``F`` columns are the signature's
``feature_names``: it gives ``N`` rows. ``data`` is flat and row-major; NaN and +/-Inf are the
strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (numpy parses them).

Skipped: shadow copies (``shadow``: the caller never saw them and they duplicate the primary's
inputs), failed requests (``status >= 400``: often inputs that did not validate), tensors
summarised instead of listed (``summary``: more than 4096 elements), and tensors whose width is
not the number of features. :class:`LoggedInputs` counts what was skipped.

Memory: the Parquet files are streamed in record batches of ``inputs``/``shadow``/``status``
only, and each batch is parsed with orjson straight into a float64 block, so a day of 1 M
requests costs its float matrix (8 bytes x rows x features) plus one batch. With ``max_rows``,
requests are kept with a seeded probability so that about ``max_rows`` rows remain (a uniform
sample; the drift tests compare distributions, which a 250 k-row sample pins down as well as
the whole day), and the frame is trimmed to ``max_rows`` at the end.

Where: ``<logs_dir>/predictions`` by default; with ``logs_location``
(:func:`registry.storage.logs_location`, i.e. ``ROOST_LOGS_URL``) the sealed files are listed
and streamed through that location's fsspec filesystem (S3: ranged GETs of the columns read).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from registry.storage import local_path
from warehouse.records import validate_model_name
from warehouse.writer import PREDICTIONS_DIR

if TYPE_CHECKING:
    from registry.storage import Location

BATCH_ROWS = 65_536
_COLUMNS = ["inputs", "shadow", "status"]


@dataclass
class LoggedInputs:
    """The feature rows of one model's day, and what was left out."""

    frame: pd.DataFrame
    requests: int
    """Primary, successful requests read (before sampling)."""
    rows: int
    """Feature rows those requests held (before sampling); ``len(frame)`` after it."""
    skipped_shadow: int = 0
    skipped_failed: int = 0
    skipped_unreadable: int = 0
    """Requests with no listed tensor of the features' width (summarised, other shapes)."""


def _remote(logs_location: Location | None) -> Location | None:
    """The location when it is object storage (read through fsspec), else None."""
    return logs_location if logs_location is not None and not logs_location.local else None


def _logs_root(logs_dir: Path, logs_location: Location | None) -> Path:
    """The local logs root: ``logs_dir``, or a local ``logs_location``'s directory."""
    if logs_location is not None and logs_location.local:
        return local_path(logs_location.url)
    return Path(logs_dir)


def partition_dir(logs_dir: Path, model: str, day: date) -> Path:
    """``<logs_dir>/predictions/model=<model>/date=<day>``."""
    validate_model_name(model)
    return Path(logs_dir) / PREDICTIONS_DIR / f"model={model}" / f"date={day.isoformat()}"


def partition_files(
    logs_dir: Path, model: str, day: date, *, logs_location: Location | None = None
) -> list[str]:
    """The published Parquet files of one (model, day) partition, sorted by name: local paths,
    or paths in ``logs_location.fs`` when it is object storage."""
    remote = _remote(logs_location)
    if remote is not None:
        validate_model_name(model)
        return remote.glob(f"{PREDICTIONS_DIR}/model={model}/date={day.isoformat()}/*.parquet")
    directory = partition_dir(_logs_root(logs_dir, logs_location), model, day)
    return [str(p) for p in sorted(directory.glob("*.parquet"))] if directory.is_dir() else []


def logged_days(
    logs_dir: Path, model: str, *, logs_location: Location | None = None
) -> list[date]:
    """The UTC days with a prediction-log partition for ``model``, oldest first."""
    relative = f"{PREDICTIONS_DIR}/model={validate_model_name(model)}"
    remote = _remote(logs_location)
    if remote is not None:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in remote.glob(f"{relative}/date=*")]
    else:
        root = _logs_root(logs_dir, logs_location) / relative
        names = [d.name for d in root.glob("date=*")] if root.is_dir() else []
    days = []
    for name in names:
        try:
            days.append(date.fromisoformat(name.removeprefix("date=")))
        except ValueError:
            continue
    return sorted(set(days))


def _tensor_rows(text: str, width: int, input_name: str | None) -> list[Any] | None:
    """The flat ``data`` of the request's feature tensor, or None when there is none."""
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    entries = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        return None
    for entry in entries:
        if not isinstance(entry, dict) or "data" not in entry:
            continue
        if input_name is not None and entry.get("name") != input_name and len(entries) > 1:
            continue
        shape = entry.get("shape")
        data = entry["data"]
        if not isinstance(shape, list) or not isinstance(data, list):
            continue
        if shape and shape[-1] == width and len(data) % width == 0 and data:
            return data
    return None


@contextlib.contextmanager
def _parquet(path: str, remote: Location | None) -> Iterator[pq.ParquetFile]:
    """One Parquet file, opened locally or through the object store's filesystem."""
    with contextlib.ExitStack() as stack:
        source: Any = stack.enter_context(remote.fs.open(path, "rb")) if remote else path
        yield stack.enter_context(pq.ParquetFile(source))


def _batches(files: Sequence[str], remote: Location | None = None) -> Iterator[Any]:
    for path in files:
        with _parquet(path, remote) as file:
            yield from file.iter_batches(batch_size=BATCH_ROWS, columns=_COLUMNS)


def _num_rows(files: Sequence[str], remote: Location | None) -> int:
    total = 0
    for path in files:
        with _parquet(path, remote) as file:
            total += file.metadata.num_rows
    return total


def read_logged_inputs(
    logs_dir: Path,
    model: str,
    day: date,
    feature_names: Sequence[str],
    *,
    input_name: str | None = None,
    max_rows: int | None = None,
    seed: int = 0,
    logs_location: Location | None = None,
) -> LoggedInputs:
    """The feature rows ``model`` was asked about on ``day`` (UTC), as float64 columns.

    ``input_name`` picks the tensor when a request has several (the signature's input);
    ``logs_location`` is where the sealed log lives when not under ``logs_dir``.
    """
    names = list(feature_names)
    width = len(names)
    if width == 0:
        raise ValueError(f"model {model!r}: no feature names to read the logged inputs with")
    files = partition_files(logs_dir, model, day, logs_location=logs_location)
    remote = _remote(logs_location)
    total = _num_rows(files, remote)
    keep = 1.0 if not max_rows or total <= max_rows else max_rows / total
    rng = np.random.default_rng(seed)
    blocks: list[np.ndarray] = []
    out = LoggedInputs(frame=pd.DataFrame(columns=names, dtype=np.float64), requests=0, rows=0)
    for batch in _batches(files, remote):
        shadow = batch.column("shadow").fill_null(False)
        failed = pc.greater_equal(batch.column("status"), 400).fill_null(True)
        out.skipped_shadow += pc.sum(shadow).as_py() or 0
        out.skipped_failed += pc.sum(pc.and_(failed, pc.invert(shadow))).as_py() or 0
        wanted = pc.and_(pc.invert(shadow), pc.invert(failed))
        texts = batch.column("inputs").filter(wanted).to_pylist()
        parsed = [_tensor_rows(t, width, input_name) for t in texts]
        good = [d for d in parsed if d is not None]
        out.skipped_unreadable += len(parsed) - len(good)
        out.requests += len(good)
        out.rows += sum(len(d) for d in good) // width
        if keep < 1.0:
            good = [d for d, u in zip(good, rng.random(len(good)), strict=True) if u < keep]
        if not good:
            continue
        count = sum(len(d) for d in good)
        flat = np.fromiter(
            (np.nan if v is None else float(v) for v in itertools.chain.from_iterable(good)),
            dtype=np.float64,
            count=count,
        )
        blocks.append(flat.reshape(-1, width))
    if blocks:
        matrix = np.concatenate(blocks)
        if max_rows and len(matrix) > max_rows:
            matrix = matrix[np.sort(rng.choice(len(matrix), max_rows, replace=False))]
        out.frame = pd.DataFrame(matrix, columns=names)
    return out
