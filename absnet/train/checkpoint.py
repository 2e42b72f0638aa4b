"""Checkpoints: a ``safetensors`` file of tensors and a JSON sidecar that vouches for it.

``last.safetensors`` holds the model weights under their ``state_dict`` keys, the optimiser's state
tensors under ``optimizer.`` and torch generator states under ``rng.``; ``last.json`` holds the
caller's meta (epoch, seed, spec hash, ...) plus a ``checkpoint`` record: format version, sha256 and
size of the safetensors file, tensor count, versions and creation time. Whole-object pickles are
never written or loaded: a pickle runs arbitrary code when it is loaded.

A save writes both files to temporary files (fsynced), keeps a hard link of the current tensors
file as ``last.safetensors.prev``, then renames the tensors file and the sidecar last. If the
process dies between the two renames, the old sidecar's hash matches ``.prev``, so the old pair
is still what :func:`load_checkpoint` returns; after both renames the new pair is.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from absnet.diagnostics import AbsnetError, Diagnostic

FORMAT = "absnet-checkpoint"
FORMAT_VERSION = 1
RESERVED_PREFIXES = ("optimizer.", "rng.")
RESERVED_META = ("checkpoint", "optimizer", "py_rng")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".tar")
_TENSOR = "__tensor__"  # a placeholder for a tensor nested in optimiser state or param_groups
_TUPLE = "__tuple__"


def spec_hash(text: str) -> str:
    """The sha256 hex digest of a spec's text (recorded in checkpoint meta).

    >>> spec_hash("network N { input [2]  Linear(2) }")[:12]
    '3447513a20d6'
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- files


def _paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(tensors file, sidecar) of a checkpoint given as its .safetensors, its .json or its stem."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _error(message: str, help: str) -> AbsnetError:
    return AbsnetError(Diagnostic("E605", message, help=help))


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a folder (Windows)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_temp(directory: Path, name: str, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def _prepare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, detached tensors, none sharing storage (safetensors refuses shared storage)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, t in tensors.items():
        if not isinstance(key, str) or not isinstance(t, torch.Tensor):
            raise TypeError(f"checkpoint tensors must map str to torch.Tensor, got {key!r}: {type(t).__name__}")
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def _versions() -> dict[str, str]:
    import absnet

    return {"absnet": absnet.__version__, "torch": torch.__version__}


def save_checkpoint(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write ``<stem>.safetensors`` and its sidecar ``<stem>.json`` atomically.

    Args:
        path: the .safetensors path, the .json path or the stem (``runs/x/checkpoints/last``).
        tensors: name → tensor (moved to the CPU; the caller's tensors are not changed).
        meta: JSON-serialisable values for the sidecar; ``checkpoint`` is reserved. Non-finite
            floats are written as ``NaN``/``Infinity`` so they read back exactly.

    >>> import tempfile, torch
    >>> d = tempfile.mkdtemp()
    >>> save_checkpoint(f"{d}/last", {"layers.0.weight": torch.ones(2)}, {"epoch": 3})
    >>> load_checkpoint(f"{d}/last.safetensors")[1]["epoch"]
    3
    """
    from safetensors.torch import save as st_save

    if "checkpoint" in meta:
        raise ValueError("meta key 'checkpoint' is reserved for the sidecar's own record")
    data_path, side_path = _paths(path)
    directory = data_path.parent
    directory.mkdir(parents=True, exist_ok=True)
    data = st_save(_prepare(tensors), metadata={"format": "pt", "writer": FORMAT})
    record = {"format": FORMAT, "version": FORMAT_VERSION, "file": data_path.name,
              "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "tensors": len(tensors),
              **_versions(), "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    sidecar = json.dumps({"checkpoint": record, **meta}, indent=2, allow_nan=True) + "\n"

    for stale in directory.glob(f".{data_path.name}.*.tmp"):  # left by a save that was killed
        with contextlib.suppress(OSError):
            stale.unlink()
    for stale in directory.glob(f".{side_path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
    data_tmp = _write_temp(directory, data_path.name, data)
    side_tmp: Path | None = None
    try:
        side_tmp = _write_temp(directory, side_path.name, sidecar.encode("utf-8"))
        _keep_previous(data_path, side_path)
        os.replace(data_tmp, data_path)
        os.replace(side_tmp, side_path)
    finally:
        for tmp in (data_tmp, side_tmp):
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()
    _fsync_dir(directory)
    with contextlib.suppress(OSError):
        _prev(data_path).unlink()


def _prev(data_path: Path) -> Path:
    return data_path.with_name(data_path.name + ".prev")


def _keep_previous(data_path: Path, side_path: Path) -> None:
    """Keep the tensors file the current sidecar vouches for as ``.prev`` until the new sidecar is in place."""
    prev = _prev(data_path)
    if not data_path.exists():
        return
    if prev.exists():
        # an earlier save died between its renames; .prev may be the only file the sidecar matches
        expected = _sidecar_hash(side_path)
        if expected is not None and expected == _file_hash(prev) != _file_hash(data_path):
            return
        prev.unlink()
    try:
        os.link(data_path, prev)
    except OSError:  # no hard links on this file system
        shutil.copyfile(data_path, prev)
        with open(prev, "rb+") as f:
            os.fsync(f.fileno())
    _fsync_dir(data_path.parent)


def _sidecar_hash(side_path: Path) -> str | None:
    try:
        return json.loads(side_path.read_text(encoding="utf-8"))["checkpoint"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _file_hash(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _looks_like_pickle(head: bytes) -> bool:
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip container
        return True
    # pickle protocol 2+ starts with PROTO; a safetensors file has '{' after its 8-byte header size
    return head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") and head[8:9] != b"{"


def _pickle_error(path: Path) -> AbsnetError:
    return _error(
        f"{path} is a pickle file (torch.save / .pt format), not an absnet checkpoint: absnet never loads "
        "pickles, because loading one can run arbitrary code; checkpoints are a .safetensors file plus a .json "
        "sidecar written by absc train",
        help="pass a checkpoint written by absc train (e.g. <run>/checkpoints/last or checkpoints/best); to bring in "
             "weights from elsewhere, load them yourself in trusted Python and copy them into the network "
             "(net.load_state_dict), then save with absnet.train.checkpoint.save_checkpoint",
    )


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict]:
    """Read and verify a checkpoint; return (tensors on the CPU, sidecar meta).

    ``path`` may be the .safetensors file, the .json sidecar or their common stem. The returned
    meta is the sidecar: the saved meta plus the ``checkpoint`` record.

    Raises:
        AbsnetError: E605 when a file is missing, truncated, corrupt, a pickle, or when the tensors
            file is not the one its sidecar was written for.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    given = Path(path)
    if given.suffix in PICKLE_SUFFIXES and given.is_file():
        raise _pickle_error(given)
    if given.is_dir():
        found = sorted(str(p.with_suffix("")) for p in given.glob("**/*.safetensors"))[:4]
        raise _error(f"{given} is a folder, not a checkpoint",
                     help=f"pass a checkpoint such as {' or '.join(found)}" if found else
                     "pass a checkpoint such as <run>/checkpoints/last")
    data_path, side_path = _paths(given)
    retry = "use the run's other checkpoint (checkpoints/best or checkpoints/last), an earlier copy, or retrain"
    if not data_path.exists() and not side_path.exists():
        raise _error(f"no checkpoint at {given}: neither {data_path} nor {side_path} exists",
                     help="pass a checkpoint written by absc train, e.g. <run>/checkpoints/last (the stem, the "
                          ".safetensors or the .json)")
    if data_path.exists():
        with open(data_path, "rb") as f:
            if _looks_like_pickle(f.read(16)):
                raise _pickle_error(data_path)
    if not side_path.exists():
        raise _error(f"{data_path} has no sidecar {side_path.name}: absnet writes the sidecar last, so the file "
                     "is unverified (copied without it, or written by an interrupted save?)",
                     help=f"copy {side_path.name} along with it, or {retry}")
    if not data_path.exists():
        raise _error(f"{side_path} is a checkpoint sidecar but its tensors file {data_path.name} is missing",
                     help=f"copy {data_path.name} along with it, or {retry}")
    try:
        meta = json.loads(side_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _error(f"{side_path} is not valid JSON ({e}): the sidecar is truncated or corrupt",
                     help=retry) from None
    record = meta.get("checkpoint") if isinstance(meta, dict) else None
    if not isinstance(record, dict) or record.get("format") != FORMAT or "sha256" not in record:
        raise _error(f"{side_path} is not an absnet checkpoint sidecar (it has no 'checkpoint' record of format "
                     f"{FORMAT!r})", help="pass a checkpoint written by absc train")
    if int(record.get("version", 0)) > FORMAT_VERSION:
        raise _error(f"{side_path} was written by a newer absnet ({record.get('absnet')}, checkpoint format "
                     f"{record.get('version')}); this absnet reads format {FORMAT_VERSION}",
                     help="upgrade absnet (pip install -U absnet)")

    data = data_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    size = int(record.get("size", -1))
    if digest != record["sha256"]:
        prev = _prev(data_path)
        if prev.exists() and _file_hash(prev) == record["sha256"]:
            data, digest = prev.read_bytes(), record["sha256"]  # a save died between its renames: the old pair
        elif len(data) < size:
            raise _error(f"{data_path} is truncated: it has {len(data)} of the {size} bytes its sidecar "
                         f"{side_path.name} records (an interrupted copy or a full disk?)", help=retry)
        else:
            raise _error(f"{data_path} does not match its sidecar {side_path.name}: its sha256 is {digest[:16]}..., "
                         f"the sidecar expects {record['sha256'][:16]}... (written by an interrupted save? or the "
                         "file was modified or corrupted)", help=retry)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise _error(f"{data_path} is not a safetensors file ({e})", help=retry) from None
    return tensors, meta


# --------------------------------------------------------------------------- training state


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON value for ``value``; tensors inside it go to ``tensors[key...]`` and leave a placeholder."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach()
        return {_TENSOR: key}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _encode(v, f"{key}.{k}", tensors) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot checkpoint optimizer value {key} of type {type(value).__name__}")


def _decode(value: Any, tensors: dict[str, torch.Tensor], used: set[str]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            used.add(value[_TENSOR])
            return tensors[value[_TENSOR]]
        if set(value) == {_TUPLE}:
            return tuple(_decode(v, tensors, used) for v in value[_TUPLE])
        return {k: _decode(v, tensors, used) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors, used) for v in value]
    return value


def pack_state(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    generators: dict[str, torch.Generator],
    py_rngs: dict[str, random.Random],
    meta: dict,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Everything needed to continue training exactly, as (tensors, meta) for :func:`save_checkpoint`.

    Tensors: the model's ``state_dict`` under its own keys, optimiser state tensors under
    ``optimizer.state.<param index>.<name>``, generator states under ``rng.<name>``. Meta: the
    caller's ``meta`` plus ``optimizer`` (class, param_groups without their ``params`` lists, and
    non-tensor per-parameter state) and ``py_rng`` (``random.Random.getstate()`` as JSON lists).
    """
    for key in RESERVED_META:
        if key in meta:
            raise ValueError(f"meta key {key!r} is reserved by pack_state/save_checkpoint")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in net.state_dict().items():
        # AbstractNetwork keys start with "layers."; anything else must still stay clear of ours
        if key.startswith(RESERVED_PREFIXES):
            raise ValueError(f"model state key {key!r} collides with the reserved checkpoint prefixes "
                             f"{RESERVED_PREFIXES}")
        tensors[key] = value
    out = dict(meta)
    out["optimizer"] = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        groups = []
        for g, group in enumerate(sd["param_groups"]):
            rest = {k: v for k, v in group.items() if k != "params"}
            groups.append({"n_params": len(group["params"]),
                           "values": _encode(rest, f"optimizer.param_groups.{g}", tensors)})
        extra: dict[str, dict[str, Any]] = {}
        for idx, state in sd["state"].items():
            for name, value in state.items():
                key = f"optimizer.state.{idx}.{name}"
                if isinstance(value, torch.Tensor):
                    tensors[key] = value
                else:
                    extra.setdefault(str(idx), {})[name] = _encode(value, key, tensors)
        out["optimizer"] = {"class": type(optimizer).__name__, "param_groups": groups, "state": extra}
    for name, gen in generators.items():
        tensors[f"rng.{name}"] = gen.get_state()
    out["py_rng"] = {}
    for name, rng in py_rngs.items():
        version, internal, gauss = rng.getstate()
        out["py_rng"][name] = [version, list(internal), gauss]
    return tensors, out


def _check_model_keys(net: torch.nn.Module, model: dict[str, torch.Tensor], source: str) -> None:
    own = net.state_dict()
    missing = sorted(own.keys() - model.keys())
    unexpected = sorted(model.keys() - own.keys())
    shapes = sorted(k for k in own.keys() & model.keys() if tuple(own[k].shape) != tuple(model[k].shape))
    if not (missing or unexpected or shapes):
        return

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

    problems = []
    if missing:
        problems.append(f"missing {some(missing)}")
    if unexpected:
        problems.append(f"unexpected {some(unexpected)}")
    if shapes:
        problems.append("different shapes for " + some(
            [f"{k} ({tuple(model[k].shape)} saved, {tuple(own[k].shape)} here)" for k in shapes]))
    raise _error(f"the weights in {source} do not fit this network ({'; '.join(problems)}): the checkpoint "
                 "belongs to a different network or spec", help="use the spec (and train block) the checkpoint "
                 "was trained with: the run folder keeps a copy as spec.absnet")


def unpack_state(
    tensors: dict[str, torch.Tensor],
    meta: dict,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    generators: dict[str, torch.Generator],
    py_rngs: dict[str, random.Random],
    *,
    source: str = "the checkpoint",
) -> None:
    """Restore what :func:`pack_state` saved into ``net``, ``optimizer``, the generators and RNGs.

    Raises:
        AbsnetError: E605 when the model keys or shapes differ (a different network or spec), or
            when optimiser state or a named random stream is missing or does not fit.
    """
    model = {k: v for k, v in tensors.items() if not k.startswith(RESERVED_PREFIXES)}
    _check_model_keys(net, model, source)
    saved = meta.get("py_rng") or {}
    missing = [n for n in generators if f"rng.{n}" not in tensors] + [n for n in py_rngs if n not in saved]
    if missing:  # checked before anything is restored, so a failure leaves the caller's objects as they were
        raise _error(f"{source} has no state for the random stream(s) {', '.join(map(repr, missing))}",
                     help="resume with the absnet version that wrote the checkpoint, or start a new run")
    if optimizer is not None:
        _load_optimizer(tensors, meta.get("optimizer"), optimizer, source)
    for name, gen in generators.items():
        gen.set_state(tensors[f"rng.{name}"].to("cpu", torch.uint8).contiguous())
    for name, rng in py_rngs.items():
        version, internal, gauss = saved[name]
        rng.setstate((version, tuple(internal), gauss))
    net.load_state_dict(model, strict=True)


def _load_optimizer(tensors: dict[str, torch.Tensor], saved: dict | None, optimizer: torch.optim.Optimizer,
                    source: str) -> None:
    own = optimizer.state_dict()
    help = "resume with the same optimizer settings the run started with, or start a new run"
    if not saved:
        raise _error(f"{source} has no optimizer state", help=help)
    if saved.get("class") != type(optimizer).__name__ or len(saved["param_groups"]) != len(own["param_groups"]) \
            or any(s["n_params"] != len(o["params"]) for s, o in zip(saved["param_groups"], own["param_groups"])):
        raise _error(f"the optimizer state in {source} ({saved.get('class')}, "
                     f"{[g['n_params'] for g in saved['param_groups']]} parameters per group) does not fit "
                     f"this {type(optimizer).__name__} ({[len(g['params']) for g in own['param_groups']]})",
                     help=help)
    used: set[str] = set()
    groups = []
    for s, o in zip(saved["param_groups"], own["param_groups"]):
        groups.append({**_decode(s["values"], tensors, used), "params": o["params"]})
    state: dict[int, dict[str, Any]] = {}
    for idx, entries in (saved.get("state") or {}).items():
        state.setdefault(int(idx), {}).update(_decode(entries, tensors, used))
    prefix = "optimizer.state."
    for key, value in tensors.items():
        if key.startswith(prefix) and key not in used:
            idx, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def load_weights(path: str | os.PathLike[str], net: torch.nn.Module) -> dict:
    """Load only the model weights of a checkpoint into ``net`` (strict about keys); return its meta.

    Raises:
        AbsnetError: E605 as :func:`load_checkpoint`, or when the weights belong to another network.
    """
    tensors, meta = load_checkpoint(path)
    model = {k: v for k, v in tensors.items() if not k.startswith(RESERVED_PREFIXES)}
    _check_model_keys(net, model, str(_paths(path)[0]))
    net.load_state_dict(model, strict=True)
    return meta
