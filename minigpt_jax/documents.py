"""Where documents come from: local `.jsonl`/`.txt`/`.parquet`/`.csv` files, a Hugging Face hub
dataset, or the reference text that ships with Python, all read through `datasets`' loaders.

This is the one reader of each document format: data preparation (`data_prep.py`) batches the
documents for its tokenizer workers (`load_documents`, `text_batches`), and tokenizer training
(`scripts/train_tokenizer.py`) streams them one by one (`iter_documents`).
"""

from __future__ import annotations

import codecs
import glob
import gzip
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from minigpt_jax.errors import DataError

if TYPE_CHECKING:
    from minigpt_jax.data_prep import PrepArgs

PYDOC = "pydoc"
# Local file suffix -> `datasets` builder: the same loaders the hub uses for these formats.
_BUILDERS = {
    ".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json",
    ".txt": "text", ".txt.gz": "text", ".parquet": "parquet", ".csv": "csv",
}
# Characters of text per tokenizer task: big enough that task overhead is noise, small enough that
# the last tasks of a small corpus do not leave a core idle for long.
_TASK_CHARS = 1 << 19




def expand_files(patterns: tuple[str, ...], flag: str) -> list[str]:
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise DataError(f"--{flag}: {pattern} matches no file")
        files += [str(Path(m).resolve()) for m in matches]
    for f in files:
        if os.path.isfile(f) and os.path.getsize(f) == 0:  # `datasets` fails on these obscurely
            raise DataError(f"--{flag}: {f} is empty: no documents; leave it out")
    return files


def builder_for(files: list[str], flag: str) -> str:
    builders = set()
    for f in files:
        name = Path(f).name.lower()
        suffix = next((s for s in _BUILDERS if name.endswith(s)), None)
        if suffix is None:
            raise DataError(
                f"--{flag}: {f}: unsupported file type; use .jsonl/.json, .txt, .parquet or .csv"
            )
        builders.add(_BUILDERS[suffix])
    if len(builders) > 1:
        raise DataError(f"--{flag}: mixes file types {sorted(builders)}; use one type per flag")
    return builders.pop()


def not_utf8(files: Sequence[str]) -> DataError | None:
    """The error naming the first text file that is not UTF-8 (and where), else None. Called
    only once a reader has failed to decode, to say which file and byte it was."""
    for f in files:
        if f.lower().endswith((".parquet", ".parquet.gz")):
            continue
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0
        with (gzip.open if f.lower().endswith(".gz") else open)(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                pending = len(decoder.getstate()[0])
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as e:
                    at = offset - pending + e.start
                    return DataError(
                        f"{f}: not UTF-8 text (byte {at:,} is 0x{e.object[e.start]:02x}); convert "
                        f"it to UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or leave it out"
                    )
                offset += len(chunk)
    return None


def pydoc_documents() -> dict[str, list[str]]:
    """The reference text that ships inside CPython (pydoc's topics), one document per topic."""
    from pydoc_data.topics import topics

    return {"text": [topics[key] for key in sorted(topics)]}


def load_files(
    files: list[str], flag: str, sample_by: str = "document", streaming: bool = False,
    cache_dir: str | None = None,
):
    """Local files of one type as a `datasets` dataset; `flag` names them in errors."""
    import datasets

    builder = builder_for(files, flag)
    kwargs = {"sample_by": sample_by} if builder == "text" else {}
    try:
        return datasets.load_dataset(
            builder, data_files=files, split="train", streaming=streaming, cache_dir=cache_dir,
            **kwargs,
        )
    except StopIteration as e:  # the json builder's feature inference on a file of blank lines
        raise DataError(f"{', '.join(files)}: no documents (only blank lines?)") from e
    except datasets.exceptions.DatasetGenerationError as e:
        raise not_utf8(files) or DataError(f"cannot read {files}: {e.__cause__ or e}") from e
    except ValueError as e:  # "Instruction 'train' corresponds to no data!": blank lines only
        raise DataError(f"{', '.join(files)}: no documents (only blank lines?): {e}") from e


def load_documents(args: PrepArgs, role: str):
    """The `datasets` dataset (or IterableDataset) of the `role` ("train" or "val") source."""
    import datasets

    files = args.val_data_files if role == "val" else args.data_files
    split = args.val_split if role == "val" else args.split
    if not args.progress:
        datasets.disable_progress_bars()  # "Generating train split" and friends
    try:
        if files:
            flag = "val_data_files" if role == "val" else "data_files"
            ds = load_files(list(files), flag, args.sample_by, args.streaming, args.cache_dir)
        elif args.dataset == PYDOC:
            ds = datasets.Dataset.from_dict(pydoc_documents())
            ds = ds.to_iterable_dataset() if args.streaming else ds
        else:
            if args.progress:
                print(f"loading {args.dataset} ({args.name or 'default'}, {split}) from the "
                      f"Hugging Face hub{' (streaming)' if args.streaming else ''}",
                      file=sys.stderr)
            ds = datasets.load_dataset(
                args.dataset, name=args.name, split=split, streaming=args.streaming,
                cache_dir=args.cache_dir,
            )
    except (ConnectionError, datasets.exceptions.DatasetNotFoundError) as e:
        config = f" (config {args.name!r})" if args.name else ""
        raise DataError(
            f"cannot reach dataset {args.dataset!r}{config} on the Hugging Face hub: {e}. This "
            f"machine may be offline or the name may be wrong. Prepare local files instead: "
            f"--data_files=PATH[,PATH...] (.jsonl with a {args.text_field!r} field, .txt "
            f"or .parquet), or --dataset=pydoc for the small corpus built into Python"
        ) from e
    except DataError:
        raise
    except StopIteration as e:  # the json builder's feature inference on a file of blank lines
        raise DataError(f"{list(files) or args.dataset}: no documents") from e
    except datasets.exceptions.DatasetGenerationError as e:
        raise DataError(f"cannot read {list(files) or args.dataset}: {e.__cause__ or e}") from e
    except ValueError as e:  # an unknown split or config name
        raise DataError(f"dataset {args.dataset!r}: {e}") from e
    if args.seed is None:
        return ds
    if isinstance(ds, datasets.Dataset):
        return ds.shuffle(seed=args.seed)
    return ds.shuffle(seed=args.seed, buffer_size=10_000)


def text_batches(
    ds, text_field: str, skip: int, where: str, files: Sequence[str] = ()
) -> Iterator[list[str]]:
    """Lists of document texts (~_TASK_CHARS characters each), starting after `skip` documents.
    `files` are the local files behind `ds`, searched for the culprit when one is not UTF-8."""
    import datasets

    columns = ds.column_names
    if columns == []:  # a streamed file of blank lines
        raise DataError(f"{where}: no documents (only blank lines?)")
    if columns is not None and text_field not in columns:
        raise DataError(
            f"{where}: no field {text_field!r} (fields: {columns}); pass --text_field=NAME"
        )
    if columns is not None and len(columns) > 1:
        ds = ds.select_columns([text_field])  # never decode the columns we do not tokenize
    if skip and isinstance(ds, datasets.Dataset):
        ds, skip = ds.skip(skip), 0  # a slice of the index: no document is read
    # Streaming sources skip by reading: IterableDataset.skip after a shuffle changes the order.
    batch: list[str] = []
    chars = 0
    index = 0
    for rows in _read_rows(ds, where, files):
        if text_field not in rows:
            raise DataError(
                f"{where}: no field {text_field!r} (fields: {list(rows)}); pass --text_field=NAME"
            )
        texts = rows[text_field]
        if skip:
            drop = min(skip, len(texts))
            texts, skip = texts[drop:], skip - drop
        for text in texts:
            if not isinstance(text, str):
                raise DataError(
                    f"{where}: document {index} has {type(text).__name__} in field {text_field!r}, "
                    f"not text; clean the input or pick another --text_field"
                )
            index += 1
            batch.append(text)
            chars += len(text)
            if chars >= _TASK_CHARS:
                yield batch
                batch, chars = [], 0
    if batch:
        yield batch


def _read_rows(ds, where: str, files: Sequence[str]) -> Iterator[dict[str, list]]:
    """`ds.iter`, with a malformed file (seen only while reading it) as one clear error."""
    import datasets
    import pyarrow as pa

    rows = iter(ds.iter(batch_size=256))
    while True:
        try:
            batch = next(rows)
        except StopIteration:
            return
        except (pa.ArrowInvalid, datasets.exceptions.DatasetGenerationError,
                UnicodeDecodeError) as e:
            cause = e.__cause__ or e
            raise not_utf8(files) or DataError(f"{where}: cannot read it: {cause}") from e
        yield batch


def iter_documents(
    paths: Iterable[str | os.PathLike], text_field: str = "text", sample_by: str = "document"
) -> Iterator[str]:
    """The documents of local files, one by one (streamed: a file never sits in memory as rows).

    A `.txt` file is one document (`sample_by="document"`), or one per paragraph or line.
    """
    for path in map(str, paths):
        if not os.path.isfile(path):
            raise DataError(f"{path}: input file not found")
        ds = load_files([path], "input", sample_by=sample_by, streaming=True)
        for batch in text_batches(ds, text_field, 0, path, [path]):
            yield from batch
