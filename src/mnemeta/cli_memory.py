"""``mnemeta memory``: look into, search, add to, copy and compact a task memory.

    mnemeta memory info PATH
    mnemeta memory search PATH --query-file q.safetensors [--k 5]     (or --id N)
    mnemeta memory add PATH --embedding-file e.safetensors [--params-file p.safetensors]
                            [--info '{"dataset": "omniglot"}'] [--metrics '{"acc": 0.9}']
    mnemeta memory export PATH DEST
    mnemeta memory compact PATH

Tensor inputs are safetensors files (no pickle): one tensor, or the one named by ``--key``.
Every subcommand prints readable lines, or JSON with ``--json``.

Errors are one line on stderr, exit 2, worded in flags rather than Python arguments. A damaged
store is refused by every subcommand but ``export``, which then copies what is still readable
(:func:`mnemeta.store.salvage`): exit 0 with a warning if every record was read, exit 2 with the
copy written and the lost ids named if some were not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mnemeta.errors import ConfigError, DataError, StoreError


def add_memory_parser(sub: Any) -> None:
    """Register ``mnemeta memory {info,search,add,export,compact}`` on the CLI's subparsers."""
    memory = sub.add_parser("memory", help="inspect, search and maintain a persistent task memory")
    cmds = memory.add_subparsers(dest="memory_command", required=True)

    p = cmds.add_parser("info", help="records, dim, index and size of a task memory")
    p.add_argument("path", help="the task memory folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info)

    p = cmds.add_parser("search", help="the stored tasks most similar to a query")
    p.add_argument("path", help="the task memory folder")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument(
        "--query-file", help="safetensors file with a (D,) or (Q, D) query embedding"
    )
    query.add_argument("--id", type=int, help="use the embedding of stored record ID as query")
    p.add_argument("--key", help="tensor name in the query file (default: its only tensor)")
    p.add_argument("--k", type=int, default=5, help="how many results (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_search)

    p = cmds.add_parser("add", help="add tasks (creates the memory if PATH does not exist)")
    p.add_argument("path", help="the task memory folder")
    p.add_argument(
        "--embedding-file",
        required=True,
        help="safetensors file with a (D,) embedding, or (N, D) for N tasks",
    )
    p.add_argument("--key", help="tensor name in the embedding file (default: its only tensor)")
    p.add_argument("--params-file", help="safetensors file of parameters to store with the task")
    p.add_argument("--info", help='JSON object stored with each task, e.g. \'{"dataset": "x"}\'')
    p.add_argument("--metrics", help="JSON object of numbers, e.g. '{\"acc_after\": 0.93}'")
    p.add_argument(
        "--index",
        choices=("flat", "hnsw", "ivf"),
        help="index kind when creating the memory (default flat: exact search)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_add)

    p = cmds.add_parser("export", help="write a consistent copy of a task memory to a new folder")
    p.add_argument("path", help="the task memory folder")
    p.add_argument("dest", help="a new (or empty) folder for the copy")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_export)

    p = cmds.add_parser(
        "compact", help="drop orphan files, reclaim space, rebuild and save the index"
    )
    p.add_argument("path", help="the task memory folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_compact)


# ---------------------------------------------------------------------- commands
def _info(args: argparse.Namespace) -> int:
    with _open(args.path, read_only=True) as mem:
        info = mem.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    state = info["index_state"]
    detail = [f"{state['records']:,} records indexed"]
    for key, label in (("M", "M"), ("ef_search", "efSearch"), ("nlist", "nlist")):
        if key in state:
            detail.append(f"{label} {state[key]}")
    if "nprobe" in state:
        detail.append(f"nprobe {state['nprobe']}")
    if "note" in state:
        detail.append(state["note"])
    print(info["path"])
    print(f"  records  {info['count']:,}")
    print(f"  dim      {info['dim']} (cosine similarity)")
    print(f"  index    {info['index']}: {', '.join(detail)}")
    print(f"  disk     {_size(info['disk_bytes'])}")
    print(f"  created  {info['created']}")
    return 0


def _search(args: argparse.Namespace) -> int:
    import torch

    if args.k < 1:
        raise ConfigError(f"--k {args.k} must be at least 1")
    from mnemeta.store import RecordNotFound

    with _open(args.path, read_only=True) as mem:
        if args.id is not None:
            try:
                queries = mem.get(args.id).embedding[None]
            except RecordNotFound as e:
                ids = f"ids run from 1 to {e.max_id}" if e.max_id else "it holds no records"
                raise StoreError(
                    f"no record {args.id} in the task memory at {args.path} ({ids}); pass --id "
                    "of a stored record (`mnemeta memory add` and `search` print them)"
                ) from None
            # The record itself would be its own best match: ask for one more and drop it.
            results = [[h for h in mem.search_many(queries, args.k + 1)[0] if h.id != args.id]]
            results = [results[0][: args.k]]
            labels = [f"record {args.id}"]
        else:
            query = _tensor(args.query_file, args.key, "--query-file")
            queries = _vectors(query, mem.dim, f"--query-file {args.query_file}")
            results = mem.search_many(queries.to(torch.float32), args.k)
            labels = [f"query {i + 1}" for i in range(len(results))]
        total = len(mem)
    if args.json:
        print(json.dumps([[_hit_dict(h) for h in hits] for hits in results], indent=2))
        return 0
    for label, hits in zip(labels, results, strict=True):
        print(f"{label}: {len(hits)} most similar of {total:,} tasks")
        print(f"  {'rank':>4s}  {'id':>8s}  {'cosine':>7s}  info / metrics")
        for rank, h in enumerate(hits, 1):
            extra = json.dumps(h.info) + (f"  {json.dumps(h.metrics)}" if h.metrics else "")
            print(f"  {rank:4d}  {h.id:8d}  {h.similarity:7.4f}  {extra}")
    return 0


def _add(args: argparse.Namespace) -> int:
    from mnemeta.store import TaskMemory
    from mnemeta.store.schema import MARKER

    emb = _tensor(args.embedding_file, args.key, "--embedding-file")
    flag = f"--embedding-file {args.embedding_file}"
    if emb.ndim not in (1, 2) or emb.numel() == 0:
        raise StoreError(
            f"{flag} holds shape {tuple(emb.shape)}; pass (D,) or (N, D) for N tasks (N, D >= 1)"
        )
    params = _tensors(args.params_file, "--params-file") if args.params_file else None
    info = _json_object(args.info, "--info")
    metrics = _json_object(args.metrics, "--metrics")
    for key, value in (metrics or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"--metrics must map names to numbers; got {key!r}: {value!r}")
    path = Path(args.path)
    created = not (path / MARKER).exists()  # then TaskMemory refuses a folder that is not empty
    dim = int(emb.shape[-1])
    with TaskMemory(
        path, dim=dim if created else None, index=args.index if created else None
    ) as mem:
        if args.index is not None and args.index != mem.kind:
            raise StoreError(
                f"--index {args.index}: {path} was created with index {mem.kind}; drop --index "
                f"(it only applies when creating a memory), or pass --index {mem.kind}"
            )
        embs = _vectors(emb, mem.dim, flag)
        n = len(embs)
        ids = mem.add_many(embs, [params] * n, [info] * n, [metrics] * n)
        total = len(mem)
    if args.json:
        print(json.dumps({"path": str(path), "ids": ids, "count": total, "created": created}))
        return 0
    if created:
        print(f"created task memory {path} (dim {embs.shape[1]}, index {args.index or 'flat'})")
    shown = ", ".join(map(str, ids)) if len(ids) <= 10 else f"{ids[0]}..{ids[-1]}"
    print(f"added {len(ids)} task{'s' if len(ids) != 1 else ''}: id {shown} ({total:,} in all)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from mnemeta.store import StoreDamaged, salvage

    try:
        with _open(args.path, read_only=True) as mem:
            report = mem.export(args.dest)
    except StoreDamaged as e:
        # A damaged store: copy record by record what SQLite can still read.
        report = salvage(args.path, args.dest)
        db = Path(args.path) / "tasks.sqlite"
        return _salvaged(args, report, f"{db} is damaged ({report['damage'] or e.detail})")
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"exported {report['count']:,} tasks to {report['path']} ({_size(report['disk_bytes'])})")
    return 0


def _salvaged(args: argparse.Namespace, report: dict[str, Any], damage: str) -> int:
    """Report a salvage: exit 0 with a warning if nothing was lost, else exit 2."""
    lost, no_params = report["lost_ids"], report["params_lost_ids"]
    if args.json:
        print(json.dumps(report))
    elif not lost and not no_params:
        print(
            f"exported {report['count']:,} tasks to {report['path']} "
            f"({_size(report['disk_bytes'])})"
        )
    copy = report["path"]
    if not lost and not no_params:
        print(
            f"warning: {damage}; every record was readable: the copy at {copy} is whole and "
            f"healthy. Use it in place of {args.path} (keep the damaged one until you have "
            "checked the copy)",
            file=sys.stderr,
        )
        return 0
    parts = []
    if lost:
        parts.append(f"{len(lost):,} could not be read (ids {_ranges(lost)})")
    if no_params:
        parts.append(
            f"{len(no_params):,} were copied without their parameters, whose files are missing "
            f"or damaged (ids {_ranges(no_params)})"
        )
    print(
        f"error: {damage}; exported the {report['count']:,} readable records of "
        f"{report['expected']:,} to {copy}, but {' and '.join(parts)}. Use the copy in place "
        f"of {args.path}, or restore a backup",
        file=sys.stderr,
    )
    return 2


def _compact(args: argparse.Namespace) -> int:
    with _open(args.path, read_only=False) as mem:
        report = mem.compact()
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"compacted {report['path']}: {report['count']:,} tasks, removed "
        f"{report['removed_files']} orphan file(s), {_size(report['bytes_before'])} -> "
        f"{_size(report['bytes_after'])}; index rebuilt and saved"
    )
    return 0


# ---------------------------------------------------------------------- helpers
def _open(path: str, *, read_only: bool) -> Any:
    """An existing task memory (never creates one), with the CLI's words for a missing one."""
    from mnemeta.store import TaskMemory
    from mnemeta.store.schema import MARKER

    p = Path(path)
    create = "create one with `mnemeta memory add PATH --embedding-file E.safetensors`"
    if not p.exists():
        raise StoreError(f"no task memory at {path}; {create}, or pass an existing one")
    if p.is_dir() and not (p / MARKER).exists():
        raise StoreError(
            f"{path} is not a mnemeta task memory (no {MARKER}); nothing was changed. Pass the "
            f"folder of an existing task memory, or {create}"
        )
    return TaskMemory(path, create=False, read_only=read_only)


def _vectors(x: Any, dim: int, what: str) -> Any:
    """``x`` ``(D,)`` or ``(N, D)`` as ``(N, D)``, checked as the store would, in CLI words."""
    import torch

    rows = x[None] if x.ndim == 1 else x
    if rows.ndim != 2 or rows.shape[1] != dim or len(rows) == 0:
        raise StoreError(
            f"{what} holds shape {tuple(x.shape)}; this memory holds embeddings of dim {dim}: "
            f"pass ({dim},) or (N, {dim})"
        )
    if not torch.isfinite(rows.double()).all():
        raise DataError(f"{what} holds NaN or infinite values; pass finite embeddings")
    if (rows == 0).all(dim=1).any():
        raise DataError(
            f"{what} holds an all-zero vector, which has no direction (cosine similarity is "
            "undefined); pass non-zero embeddings"
        )
    return rows


def _tensors(file: str, flag: str) -> dict[str, Any]:
    import safetensors.torch

    p = Path(file)
    if not p.is_file():
        raise DataError(f"{flag} {file} does not exist; pass a .safetensors file")
    try:
        return dict(safetensors.torch.load_file(p))
    except Exception as e:  # safetensors raises its own error type for foreign files
        raise DataError(
            f"{flag} {file} is not a readable safetensors file ({e}); write one with "
            "safetensors.torch.save_file({'embedding': tensor}, path)"
        ) from None


def _tensor(file: str, key: str | None, flag: str) -> Any:
    tensors = _tensors(file, flag)
    if key is not None:
        if key not in tensors:
            raise DataError(
                f"{flag} {file} has no tensor {key!r}; it has: {', '.join(sorted(tensors))}"
            )
        return tensors[key]
    if len(tensors) != 1:
        raise DataError(
            f"{flag} {file} holds {len(tensors)} tensors ({', '.join(sorted(tensors))}); "
            "name the one to use with --key"
        )
    return next(iter(tensors.values()))


def _json_object(text: str | None, flag: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ConfigError(
            f"{flag} is not valid JSON ({e}); pass an object like '{{\"a\": 1}}'"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} must be a JSON object like '{{\"a\": 1}}', got {text!r}")
    return value


def _ranges(ids: list[int], most: int = 6) -> str:
    """``[1, 2, 3, 7, 9, 10]`` as ``"1-3, 7, 9-10"``, the first ``most`` runs then "..."."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = [f"{a}-{b}" if b > a else f"{a}" for a, b in runs[:most]]
    return ", ".join(text) + (", ..." if len(runs) > most else "")


def _hit_dict(hit: Any) -> dict[str, Any]:
    return {"id": hit.id, "similarity": hit.similarity, "info": hit.info, "metrics": hit.metrics}


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    size = float(n)
    for unit in ("KB", "MB", "GB"):
        size /= 1000
        if size < 1000 or unit == "GB":
            break
    return f"{size:,.1f} {unit}"
