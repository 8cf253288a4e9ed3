"""Stage `soup`: the weighted average of fine-tuned checkpoints (a "model soup").

Inputs are Hugging Face model directories written by ``save_pretrained``
(one ``model.safetensors`` or shards plus ``model.safetensors.index.json``).
The soup is the weighted elementwise mean, tensor by tensor, accumulated in
float32 and written in each tensor's own dtype. It streams: tensors are read
one at a time and written straight into the output file, whose header is
planned from the inputs' headers before any data is read, so memory stays
around one tensor per input whatever the model size.

Everything is checked before anything is written: same architecture
(config.json), same tokenizer files, same tensor names, shapes and dtypes
(integer tensors, which cannot be averaged, must be equal: checked while
writing). A failure leaves no output directory.
Tied weights need no special case: ``save_pretrained`` saves a tied pair
under one name, the soup keeps exactly the inputs' names and copies
config.json, so the tie is restored when the soup is loaded.

LoRA checkpoints must be merged (``merge_and_unload``) before souping:
the mean of the factors A and B is not the mean of the products B @ A.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import struct
from pathlib import Path

from salsa import artifacts
from salsa.args import arg, parse

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# config.json keys that record who saved the model, not what it is.
CONFIG_BOOKKEEPING = {"_name_or_path", "transformers_version", "torch_dtype", "dtype"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "chat_template.jinja", "chat_template.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
WEIGHT_SUM_TOLERANCE = 1e-6
SLICE_ELEMENTS = 1 << 20  # 4 MB of float32 per step


@dataclasses.dataclass
class SoupConfig:
    """Average the weights of fine-tuned checkpoints of one model."""

    inputs: list[str] = arg(help="Hugging Face model directories to average (same model)")
    out: str = arg(help="output model directory")
    weights: list[float] = arg([], help="one weight per input, non-negative, summing to 1 (empty: uniform)")
    allow_extrapolation: bool = arg(False, help="allow negative weights (still summing to 1): points on the "
                                               "line through the inputs beyond them (salsa.landscape)")
    distances: bool = arg(True, help="record each input's parameter L2 distance to the soup and to the others "
                                      "(distances.json; one extra pass of arithmetic, no extra reads)")
    max_shard_size_mb: float = arg(2000.0, help="split the output into shards above this size (MB, 10**6 bytes)")
    seed: int = arg(0, help="recorded only: averaging draws nothing at random")


@dataclasses.dataclass
class TensorInfo:
    name: str
    file: Path          # the input shard holding it
    dtype: str          # safetensors dtype code, e.g. "BF16"
    shape: list[int]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _torch_dtype(self.dtype).itemsize


def _torch_dtype(code: str):
    """The torch dtype of a safetensors dtype code, or None for those soup does not handle (float8...)."""
    import torch
    codes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
             "U8": torch.uint8, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
             "BOOL": torch.bool}
    return codes.get(code)


def check_weights(weights: list[float], n_inputs: int, allow_extrapolation: bool = False) -> list[float]:
    """Uniform when empty; otherwise one non-negative weight per input, summing to 1.

    Negative weights only when asked for: a soup is an average, and a
    negative weight is almost always a typo; the landscape stage asks."""
    if n_inputs < 1:
        raise artifacts.StageError("--inputs: need at least one model directory")
    if not weights:
        return [1.0 / n_inputs] * n_inputs
    if len(weights) != n_inputs:
        raise artifacts.StageError(f"--weights: got {len(weights)} weights for {n_inputs} inputs")
    for weight in weights:
        if not math.isfinite(weight):
            raise artifacts.StageError(f"--weights: weight {weight} is not a finite number")
        if weight < 0 and not allow_extrapolation:
            raise artifacts.StageError(f"--weights: weight {weight} is negative (extrapolation needs "
                                       "--allow-extrapolation true)")
    total = math.fsum(weights)
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise artifacts.StageError(f"--weights: weights sum to {total!r}, not 1 (tolerance {WEIGHT_SUM_TOLERANCE})")
    return [float(w) for w in weights]


def weight_files(model_dir: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files of a model directory, and the index's weight_map when sharded."""
    if not model_dir.is_dir():
        raise artifacts.StageError(f"{model_dir}: model directory not found")
    if (model_dir / SINGLE_FILE).is_file():  # the order from_pretrained looks in
        return [model_dir / SINGLE_FILE], None
    index_path = model_dir / INDEX_FILE
    if not index_path.is_file():
        raise artifacts.StageError(f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE} (safetensors weights) found")
    index = artifacts.read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(shard, str) and "/" not in shard for shard in weight_map.values()):
        raise artifacts.StageError(f"{index_path}: malformed index: needs a 'weight_map' of tensor name -> shard file")
    files = [model_dir / shard for shard in sorted(set(weight_map.values()))]
    for file in files:
        if not file.is_file():
            raise artifacts.StageError(f"{index_path}: malformed index: shard {file.name} does not exist")
    return files, weight_map


def read_header(file: Path) -> list[TensorInfo]:
    """The tensors of one safetensors file in storage order (reading in it reads the file front to back)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            tensors = [TensorInfo(name, file, handle.get_slice(name).get_dtype(),
                                  list(handle.get_slice(name).get_shape())) for name in handle.offset_keys()]
    except Exception as err:  # safetensors has its own error types for damaged files
        raise artifacts.StageError(f"{file}: not a readable safetensors file ({err})") from None
    for info in tensors:
        if _torch_dtype(info.dtype) is None:
            raise artifacts.StageError(f"{file}: tensor '{info.name}' has dtype {info.dtype}, which soup does not average")
    return tensors


def read_tensor_table(model_dir: Path) -> dict[str, TensorInfo]:
    """Names, shapes and dtypes of a checkpoint's tensors, from the safetensors headers only."""
    files, weight_map = weight_files(model_dir)
    table: dict[str, TensorInfo] = {}
    for file in files:
        for info in read_header(file):
            if info.name in table:
                raise artifacts.StageError(f"{file}: tensor '{info.name}' is also in {table[info.name].file.name}")
            table[info.name] = info
    if weight_map is not None:  # the index must describe the shards exactly
        for name in weight_map.keys() | table.keys():
            in_file = table[name].file.name if name in table else None
            if weight_map.get(name) != in_file:
                raise artifacts.StageError(f"{model_dir / INDEX_FILE}: malformed index: tensor '{name}' is in "
                                           f"{in_file or 'no shard'} but the weight_map says {weight_map.get(name)}")
    return table


def check_same_model(first: Path, other: Path) -> None:
    """Same architecture and the same tokenizer, or a StageError naming the file."""
    first_config = artifacts.read_json(first / "config.json")
    other_config = artifacts.read_json(other / "config.json")
    for key in sorted((first_config.keys() | other_config.keys()) - CONFIG_BOOKKEEPING):
        if first_config.get(key) != other_config.get(key):
            raise artifacts.StageError(
                f"{other / 'config.json'}: architecture differs from {first / 'config.json'} in '{key}' "
                f"({other_config.get(key)!r} vs {first_config.get(key)!r})")
    for name in TOKENIZER_FILES:
        first_file, other_file = first / name, other / name
        if first_file.exists() != other_file.exists():
            present, absent = (first_file, other_file) if first_file.exists() else (other_file, first_file)
            raise artifacts.StageError(f"{absent}: tokenizer file missing (present in {present.parent})")
        if first_file.exists() and _file_content(first_file) != _file_content(other_file):
            raise artifacts.StageError(f"{other_file}: tokenizer differs from {first_file}")


def _file_content(path: Path):
    # JSON is compared parsed, so key order and indentation do not matter.
    return artifacts.read_json(path) if path.suffix == ".json" else path.read_bytes()


def check_same_tensors(first: dict[str, TensorInfo], other: dict[str, TensorInfo],
                       first_dir: Path, other_dir: Path) -> None:
    for name in first:
        if name not in other:
            raise artifacts.StageError(f"{other_dir}: tensor '{name}' missing (present in {first_dir})")
    for name, info in other.items():
        if name not in first:
            raise artifacts.StageError(f"{info.file}: tensor '{name}' is not in {first_dir}")
        reference = first[name]
        if info.shape != reference.shape:
            raise artifacts.StageError(f"{info.file}: tensor '{name}' has shape {info.shape}, "
                                       f"but {reference.file} has {reference.shape}")
        if info.dtype != reference.dtype:
            raise artifacts.StageError(f"{info.file}: tensor '{name}' has dtype {info.dtype}, "
                                       f"but {reference.file} has {reference.dtype}")


def plan_shards(tensors: list[TensorInfo], max_shard_bytes: int) -> list[list[TensorInfo]]:
    """Greedy split in reading order, as save_pretrained does; a tensor larger than the limit gets its own shard."""
    shards: list[list[TensorInfo]] = [[]]
    shard_bytes = 0
    for info in tensors:
        if shards[-1] and shard_bytes + info.nbytes > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(info)
        shard_bytes += info.nbytes
    return shards


def safetensors_header(shard: list[TensorInfo]) -> bytes:
    """The safetensors header for tensors stored back to back in this order."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for info in shard:
        header[info.name] = {"dtype": info.dtype, "shape": info.shape,
                             "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keeps the data 8-byte aligned, like safetensors itself
    return struct.pack("<Q", len(text)) + text


def read_tensor(info: TensorInfo):
    """A flat view of one input tensor (safe_open maps the file; pages are read as they are touched)."""
    from safetensors import safe_open

    # One short-lived handle per read: the file's mapping goes away with the
    # tensor, so resident memory never grows towards the size of the model.
    with safe_open(str(info.file), framework="pt") as handle:
        return handle.get_tensor(info.name).reshape(-1)


def _raw_bytes(tensor):
    import torch
    return tensor.view(torch.uint8).numpy().data


class Distances:
    """Squared parameter distances accumulated slice by slice while the soup is written (no second read)."""

    def __init__(self, n: int):
        self.to_soup = [0.0] * n
        self.between = [[0.0] * n for _ in range(n)]
        self.soup_norm = 0.0

    def add(self, slices: list, soup) -> None:
        self.soup_norm += float(soup.double().square().sum())
        for i, x in enumerate(slices):
            self.to_soup[i] += float((x.double() - soup.double()).square().sum())
            for j in range(i + 1, len(slices)):
                d = float((x.double() - slices[j].double()).square().sum())
                self.between[i][j] += d
                self.between[j][i] += d

    def summary(self) -> dict:
        root = [math.sqrt(v) for v in self.to_soup]
        return {"l2_to_soup": root, "l2_between": [[math.sqrt(v) for v in row] for row in self.between],
                "l2_soup": math.sqrt(self.soup_norm),
                "relative_l2_to_soup": [v / math.sqrt(self.soup_norm) if self.soup_norm else math.nan
                                        for v in root]}


def write_averaged_tensor(out_file, name: str, tables: list[dict[str, TensorInfo]], weights: list[float],
                          distances: Distances | None = None) -> None:
    """Append sum_i w_i * x_i for one tensor, accumulated in float32 (float64 stays float64), cast back once."""
    import torch

    infos = [table[name] for table in tables]
    tensors = [read_tensor(info) for info in infos]
    out_dtype = _torch_dtype(infos[0].dtype)
    if not out_dtype.is_floating_point:  # integer/bool buffers cannot be averaged, only shared
        for info, tensor in zip(infos[1:], tensors[1:]):
            if not torch.equal(tensors[0], tensor):
                raise artifacts.StageError(f"{info.file}: integer tensor '{name}' differs from {infos[0].file}; "
                                           "it cannot be averaged")
        out_file.write(_raw_bytes(tensors[0]))
        return
    # Cache-sized slices: whole-tensor float32 temporaries make this memory-bound
    # and about 5x slower; slices also keep the float32 buffer small.
    numel = tensors[0].numel()
    accumulator = torch.empty(min(numel, SLICE_ELEMENTS), dtype=torch.promote_types(out_dtype, torch.float32))
    result = accumulator if accumulator.dtype == out_dtype else torch.empty(len(accumulator), dtype=out_dtype)
    for start in range(0, numel, SLICE_ELEMENTS):
        stop = min(start + SLICE_ELEMENTS, numel)
        total = accumulator[:stop - start]
        total.copy_(tensors[0][start:stop]).mul_(weights[0])
        for tensor, weight in zip(tensors[1:], weights[1:]):
            total.add_(tensor[start:stop], alpha=weight)  # upcasts while adding, no float32 copy of the input
        # the single rounding to the output dtype (none when it is the accumulator's)
        out = total if result is accumulator else result[:stop - start].copy_(total)
        if distances is not None:
            distances.add([tensor[start:stop] for tensor in tensors], total)
        out_file.write(_raw_bytes(out))


def write_soup_weights(tables: list[dict[str, TensorInfo]], weights: list[float], directory: Path,
                       max_shard_bytes: int, distances: Distances | None = None) -> dict:
    import torch

    # One thread: the slices are too small to split, and on a busy machine a
    # second OpenMP thread waiting at every barrier made this up to 10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _write_shards(tables, weights, directory, max_shard_bytes, distances)
    finally:
        torch.set_num_threads(threads)


def _write_shards(tables: list[dict[str, TensorInfo]], weights: list[float], directory: Path,
                  max_shard_bytes: int, distances: Distances | None = None) -> dict:
    tensors = list(tables[0].values())
    shards = plan_shards(tensors, max_shard_bytes)
    names = ([SINGLE_FILE] if len(shards) == 1 else
             [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)])
    for shard, file_name in zip(shards, names):
        with open(directory / file_name, "wb") as out_file:
            out_file.write(safetensors_header(shard))  # the data follows in exactly the planned order
            for info in shard:
                write_averaged_tensor(out_file, info.name, tables, weights, distances)
    total_size = sum(info.nbytes for info in tensors)
    if len(shards) > 1:
        weight_map = {info.name: file_name for shard, file_name in zip(shards, names) for info in shard}
        artifacts.write_json(directory / INDEX_FILE, {"metadata": {"total_size": total_size},
                                                      "weight_map": dict(sorted(weight_map.items()))})
    return {"tensors": len(tensors), "total_size": total_size, "files": names}


def copy_non_weight_files(source: Path, directory: Path) -> list[str]:
    """config.json, tokenizer and generation files; not weights and not the input's own salsa_meta.json."""
    copied = []
    for path in sorted(source.iterdir()):
        skip = (not path.is_file() or path.name.startswith(".") or path.name == artifacts.METADATA_FILE
                or path.name.endswith(WEIGHT_SUFFIXES) or path.name.endswith(".index.json"))
        if not skip:
            shutil.copy2(path, directory / path.name)
            copied.append(path.name)
    return copied


def average_checkpoints(inputs: list[Path], weights: list[float], out: Path, max_shard_bytes: int,
                        *, config: object = None, seed: int | None = None, allow_extrapolation: bool = False,
                        distances: bool = False, finish=None) -> dict:
    """Write the weighted average of ``inputs`` to ``out``; return a summary. Checks everything first.

    With ``distances``, also the parameter L2 distance of each input to the soup and between inputs
    (floating tensors only), written to distances.json: how different the ingredients are.
    ``finish(directory) -> dict``, if given, runs on the written soup before it is renamed into
    place (e.g. a reward soup recomputes its normalisation); its dict goes into salsa_meta.json."""
    inputs, out = [Path(p) for p in inputs], Path(out)
    weights = check_weights(list(weights), len(inputs), allow_extrapolation)
    if max_shard_bytes <= 0:
        raise artifacts.StageError(f"max shard size: must be positive, got {max_shard_bytes}")
    if any(out.resolve() == p.resolve() for p in inputs):
        raise artifacts.StageError(f"{out}: the output directory is one of the inputs")
    tables = [read_tensor_table(p) for p in inputs]
    for model_dir, table in zip(inputs[1:], tables[1:]):
        check_same_model(inputs[0], model_dir)
        check_same_tensors(tables[0], table, inputs[0], model_dir)
    if config is None:
        config = {"inputs": inputs, "weights": weights, "out": out, "max_shard_bytes": max_shard_bytes}

    with artifacts.atomic_dir(out) as tmp:
        tracker = Distances(len(inputs)) if distances else None
        summary = write_soup_weights(tables, weights, tmp, max_shard_bytes, tracker)
        summary["copied"] = copy_non_weight_files(inputs[0], tmp)
        extra = {"ingredients": [str(p) for p in inputs], "weights": weights}
        if tracker is not None:
            summary["distances"] = {**extra, **tracker.summary()}
            artifacts.write_json(tmp / "distances.json", summary["distances"])
        finished = finish(tmp) if finish is not None else {}
        artifacts.write_metadata(tmp, "soup", config, seed, extra={**extra, **finished})
    return summary


def main(argv: list[str] | None = None) -> None:
    config = parse(SoupConfig, argv)
    summary = average_checkpoints([Path(p) for p in config.inputs], config.weights, Path(config.out),
                                  int(config.max_shard_size_mb * 10**6), config=config, seed=config.seed,
                                  allow_extrapolation=config.allow_extrapolation, distances=config.distances)
    print(f"soup: averaged {summary['tensors']} tensors of {len(config.inputs)} models "
          f"into {len(summary['files'])} file(s), {summary['total_size'] / 1e6:.1f} MB, in {config.out}")


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
