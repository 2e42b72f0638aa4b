"""Checkpoints: atomic saves, verified loads with one-paragraph E605 errors, and exact resumption."""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from absnet.diagnostics import AbsnetError
from absnet.train.checkpoint import (
    load_checkpoint,
    load_weights,
    pack_state,
    save_checkpoint,
    spec_hash,
    unpack_state,
)


class MLP(nn.Module):
    """Keys like an AbstractNetwork's: ``layers.<i>.weight``."""

    def __init__(self, seed: int, hidden: int = 8):
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def e605(excinfo: pytest.ExceptionInfo[AbsnetError]) -> str:
    (diag,) = excinfo.value.diagnostics
    assert diag.code == "E605"
    assert "\n" not in diag.message and diag.help
    return diag.message


def weights(value: float) -> dict[str, torch.Tensor]:
    return {"layers.0.weight": torch.full((3, 2), value), "layers.0.bias": torch.zeros(3)}


# --------------------------------------------------------------------------- files


def test_round_trip_keeps_tensors_and_meta_and_records_the_file(tmp_path: Path) -> None:
    tensors = {**weights(1.5), "step": torch.tensor(7.0), "rng.g": torch.Generator().get_state()}
    save_checkpoint(tmp_path / "last.safetensors", tensors, {"epoch": 3, "best": {"value": float("inf")}})
    loaded, meta = load_checkpoint(tmp_path / "last")
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], tensors[k]) and loaded[k].dtype == tensors[k].dtype for k in tensors)
    assert meta["epoch"] == 3 and meta["best"]["value"] == float("inf")
    record = meta["checkpoint"]
    data = (tmp_path / "last.safetensors").read_bytes()
    assert record["size"] == len(data) and record["tensors"] == 4 and record["version"] == 1
    assert record["torch"] == torch.__version__ and record["absnet"]
    assert sorted(os.listdir(tmp_path)) == ["last.json", "last.safetensors"]  # no temporary files left


def test_path_may_be_the_stem_the_safetensors_or_the_sidecar(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "best", weights(2.0), {"epoch": 1})
    for given in ("best", "best.safetensors", "best.json"):
        assert load_checkpoint(tmp_path / given)[1]["epoch"] == 1


def test_tensors_sharing_storage_are_saved_separately(tmp_path: Path) -> None:
    w = torch.arange(6.0).reshape(2, 3)
    save_checkpoint(tmp_path / "last", {"layers.0.weight": w, "layers.1.weight": w, "layers.2.row": w[1]}, {})
    loaded, _ = load_checkpoint(tmp_path / "last")
    assert torch.equal(loaded["layers.1.weight"], w) and torch.equal(loaded["layers.2.row"], w[1])


def failing_replace(monkeypatch: pytest.MonkeyPatch, fail_on: int) -> None:
    real = os.replace
    calls = {"n": 0}

    def replace(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        calls["n"] += 1
        if calls["n"] == fail_on:
            raise OSError("simulated crash")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("fail_on", [1, 2])
def test_a_save_that_dies_before_or_between_its_renames_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_on: int
) -> None:
    save_checkpoint(tmp_path / "last", weights(1.0), {"epoch": 1})
    with monkeypatch.context() as m:
        failing_replace(m, fail_on)
        with pytest.raises(OSError, match="simulated crash"):
            save_checkpoint(tmp_path / "last", weights(2.0), {"epoch": 2})
    tensors, meta = load_checkpoint(tmp_path / "last")
    assert meta["epoch"] == 1 and torch.equal(tensors["layers.0.weight"], torch.full((3, 2), 1.0))
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    # the next complete save wins and cleans up
    save_checkpoint(tmp_path / "last", weights(3.0), {"epoch": 3})
    assert load_checkpoint(tmp_path / "last")[1]["epoch"] == 3
    assert sorted(os.listdir(tmp_path)) == ["last.json", "last.safetensors"]


def test_two_saves_dying_between_renames_in_a_row_still_leave_the_last_complete_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path / "last", weights(1.0), {"epoch": 1})
    for epoch in (2, 3):
        with monkeypatch.context() as m:
            failing_replace(m, 2)
            with pytest.raises(OSError):
                save_checkpoint(tmp_path / "last", weights(float(epoch)), {"epoch": epoch})
        assert load_checkpoint(tmp_path / "last")[1]["epoch"] == 1


def test_a_truncated_tensors_file_is_reported(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "last", weights(1.0), {})
    data = tmp_path / "last.safetensors"
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(AbsnetError) as e:
        load_checkpoint(data)
    msg = e605(e)
    assert str(data) in msg and "truncated" in msg


def test_a_flipped_byte_is_a_hash_mismatch(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "last", weights(1.0), {})
    data = tmp_path / "last.safetensors"
    raw = bytearray(data.read_bytes())
    raw[-3] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(AbsnetError) as e:
        load_checkpoint(tmp_path / "last")
    msg = e605(e)
    assert "does not match its sidecar" in msg and "interrupted save" in msg
    assert "checkpoints/best" in e.value.diagnostics[0].help


def test_a_missing_sidecar_is_reported(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "last", weights(1.0), {})
    (tmp_path / "last.json").unlink()
    with pytest.raises(AbsnetError) as e:
        load_checkpoint(tmp_path / "last.safetensors")
    assert "has no sidecar last.json" in e605(e)


def test_a_missing_tensors_file_and_a_missing_checkpoint_are_reported(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "last", weights(1.0), {})
    (tmp_path / "last.safetensors").unlink()
    with pytest.raises(AbsnetError) as e:
        load_checkpoint(tmp_path / "last.json")
    assert "last.safetensors is missing" in e605(e)
    with pytest.raises(AbsnetError) as e:
        load_checkpoint(tmp_path / "nothing")
    assert "no checkpoint at" in e605(e)


def test_a_corrupt_sidecar_is_reported(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "last", weights(1.0), {})
    side = tmp_path / "last.json"
    side.write_text(side.read_text()[:20])
    with pytest.raises(AbsnetError) as e:
        load_checkpoint(tmp_path / "last")
    assert "not valid JSON" in e605(e)
    side.write_text(json.dumps({"epoch": 1}))
    with pytest.raises(AbsnetError) as e:
        load_checkpoint(tmp_path / "last")
    assert "not an absnet checkpoint sidecar" in e605(e)


def test_a_file_that_is_not_safetensors_is_reported_even_when_its_hash_matches(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "last", weights(1.0), {})
    garbage = b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"
    (tmp_path / "last.safetensors").write_bytes(garbage)
    side = tmp_path / "last.json"
    meta = json.loads(side.read_text())
    meta["checkpoint"].update(size=len(garbage), sha256=__import__("hashlib").sha256(garbage).hexdigest())
    side.write_text(json.dumps(meta))
    with pytest.raises(AbsnetError) as e:
        load_checkpoint(tmp_path / "last")
    assert "is not a safetensors file" in e605(e)


@pytest.mark.parametrize("kind", ["pickle", "zip"])
def test_pickle_files_are_refused_without_being_loaded(tmp_path: Path, kind: str) -> None:
    class Boom:
        def __reduce__(self) -> tuple:
            return (pytest.fail, ("the pickle was loaded",))

    payload = pickle.dumps({"w": Boom()}, protocol=4) if kind == "pickle" else b"PK\x03\x04" + b"\x00" * 40
    for name in ("model.pt", "last.safetensors"):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(AbsnetError) as e:
            load_checkpoint(tmp_path / name)
        msg = e605(e)
        assert "pickle" in msg and "never loads pickles" in msg and name in msg


def test_a_folder_is_not_a_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "checkpoints" / "last", weights(1.0), {})
    with pytest.raises(AbsnetError) as e:
        load_checkpoint(tmp_path)
    assert "is a folder" in e605(e)
    assert "checkpoints/last" in e.value.diagnostics[0].help


def test_spec_hash_is_the_sha256_of_the_text() -> None:
    assert spec_hash("a") == "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"


# --------------------------------------------------------------------------- training state


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)


def train_steps(net: MLP, opt: torch.optim.Optimizer, gen: torch.Generator, rng: random.Random, steps: int) -> None:
    x_all, y_all = make_data()
    for _ in range(steps):
        idx = rng.sample(range(64), 16)  # python RNG: batch choice; torch generator: input noise
        x = x_all[idx] + 0.1 * torch.randn(16, 4, generator=gen)
        loss = F.cross_entropy(net(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), weight_decay=1e-4),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_resuming_from_a_checkpoint_is_bit_identical_to_not_stopping(tmp_path: Path, name: str) -> None:
    net = MLP(seed=0)
    opt = OPTIMIZERS[name](net.parameters())
    gen, rng = torch.Generator().manual_seed(1), random.Random(2)
    train_steps(net, opt, gen, rng, 3)
    tensors, meta = pack_state(net, opt, {"noise": gen}, {"batches": rng}, {"epoch": 3})
    save_checkpoint(tmp_path / "last", tensors, meta)
    train_steps(net, opt, gen, rng, 4)

    other = MLP(seed=99)  # different weights, fresh optimizer and streams: all must be overwritten
    other_opt = OPTIMIZERS[name](other.parameters())
    other_gen, other_rng = torch.Generator().manual_seed(5), random.Random(6)
    tensors, meta = load_checkpoint(tmp_path / "last")
    unpack_state(tensors, meta, other, other_opt, {"noise": other_gen}, {"batches": other_rng})
    assert meta["epoch"] == 3
    train_steps(other, other_opt, other_gen, other_rng, 4)

    for (k, a), (k2, b) in zip(net.state_dict().items(), other.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    sa, sb = opt.state_dict(), other_opt.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for idx, state in sa["state"].items():
        for key, value in state.items():
            other_value = sb["state"][idx][key]
            assert torch.equal(value, other_value) if isinstance(value, torch.Tensor) else value == other_value


def test_pack_state_lays_out_tensors_and_meta_as_documented() -> None:
    net = MLP(seed=0)
    opt = OPTIMIZERS["adam"](net.parameters())
    train_steps(net, opt, torch.Generator().manual_seed(0), random.Random(0), 1)
    tensors, meta = pack_state(net, opt, {"goal": torch.Generator()}, {"goal": random.Random(1)}, {"epoch": 1})
    assert {k for k in tensors if k.startswith("layers.")} == set(net.state_dict())
    assert "optimizer.state.0.exp_avg" in tensors and tensors["optimizer.state.3.step"].dim() == 0
    assert tensors["rng.goal"].dtype == torch.uint8
    group = meta["optimizer"]["param_groups"][0]
    assert group["n_params"] == 4 and group["values"]["lr"] == 0.01 and "params" not in group["values"]
    json.dumps(meta)  # the sidecar must be plain JSON
    with pytest.raises(ValueError, match="reserved"):
        pack_state(net, None, {}, {}, {"optimizer": 1})


def test_generator_and_python_rng_states_round_trip_exactly(tmp_path: Path) -> None:
    gen, rng = torch.Generator().manual_seed(11), random.Random(12)
    torch.rand(5, generator=gen)
    rng.gauss(0.0, 1.0)  # leaves a cached second normal in the state (gauss_next)
    tensors, meta = pack_state(MLP(0), None, {"g": gen}, {"r": rng}, {})
    save_checkpoint(tmp_path / "s", tensors, meta)
    expected = (torch.rand(5, generator=gen), rng.gauss(0.0, 1.0), rng.random())

    gen2, rng2 = torch.Generator().manual_seed(0), random.Random(0)
    tensors, meta = load_checkpoint(tmp_path / "s")
    unpack_state(tensors, meta, MLP(0), None, {"g": gen2}, {"r": rng2})
    got = (torch.rand(5, generator=gen2), rng2.gauss(0.0, 1.0), rng2.random())
    assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:]


def test_unpack_into_another_network_names_the_keys(tmp_path: Path) -> None:
    tensors, meta = pack_state(MLP(0), None, {}, {}, {})
    before = {k: v.clone() for k, v in MLP(1, hidden=5).state_dict().items()}
    wider = MLP(1, hidden=5)
    with pytest.raises(AbsnetError) as e:
        unpack_state(tensors, meta, wider, None, {}, {})
    msg = e605(e)
    assert "layers.0.weight" in msg and "different network or spec" in msg
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())  # nothing was changed
    deeper = nn.Module()
    deeper.layers = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 3))
    with pytest.raises(AbsnetError) as e:
        unpack_state(tensors, meta, deeper, None, {}, {})
    assert "missing layers.3.bias, layers.3.weight" in e605(e)


def test_unpack_refuses_missing_streams_and_a_different_optimizer() -> None:
    net = MLP(0)
    tensors, meta = pack_state(net, torch.optim.SGD(net.parameters(), lr=0.1), {}, {}, {})
    with pytest.raises(AbsnetError) as e:
        unpack_state(tensors, meta, net, None, {"goal": torch.Generator()}, {})
    assert "'goal'" in e605(e)
    with pytest.raises(AbsnetError) as e:
        unpack_state(tensors, meta, net, torch.optim.Adam(net.parameters()), {}, {})
    assert "does not fit this Adam" in e605(e)


def test_load_weights_loads_only_the_model(tmp_path: Path) -> None:
    net = MLP(0)
    opt = OPTIMIZERS["sgd_nesterov"](net.parameters())
    train_steps(net, opt, torch.Generator(), random.Random(0), 2)
    tensors, meta = pack_state(net, opt, {"g": torch.Generator()}, {}, {"epoch": 2, "time": 2.0})
    save_checkpoint(tmp_path / "last", tensors, meta)
    fresh = MLP(5)
    meta = load_weights(tmp_path / "last.safetensors", fresh)
    assert meta["epoch"] == 2 and meta["time"] == 2.0
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), fresh.state_dict().values()))
    with pytest.raises(AbsnetError) as e:
        load_weights(tmp_path / "last", MLP(0, hidden=3))
    assert "last.safetensors" in e605(e)
