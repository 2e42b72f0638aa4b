"""The training loop of ``absc train``: epochs over a dataset, one goal loss per batch, tests, checkpoints.

Time: at batch i (0-based) of epoch e (1-based) of n batches, schedules see t = (e − 1) + (i + 1)/n
fractional epochs (reference/diffai.md §4). Randomness: the shuffle/augmentation stream and the
goals' and directives' streams are reseeded from (seed, epoch) at the start of every epoch, so an
epoch's result depends only on the state at its start. A checkpoint (model, optimiser, generator
states, position) is written atomically after every epoch and when the run is interrupted, so
``--resume`` continues exactly. BatchNorm running statistics move once per step (on the clean
forward), never during attacks or abstract passes.

Several processes (:mod:`absnet.train.distributed`): a step consumes one *global* batch of
``batch × accumulate × world`` examples, each rank its slice; positions are kept in examples, so
a checkpoint resumes under any world size; goal/net/schedule streams are per rank (rank 0's are
the single-process streams); only rank 0 writes the run folder.
"""

from __future__ import annotations

import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from absnet.diagnostics import AbsnetError, Diagnostic
from absnet.train import distributed
from absnet.train.config import TrainConfig
from absnet.train.engines import build_engine


@dataclass
class TrainOptions:
    """Command-line options of ``absc train`` that are not part of the spec."""

    out: Path = Path("runs")
    resume: Path | None = None
    device: str = "cpu"
    engine: str = "torch"  # "onnxruntime": steps run an exported training-step graph (absnet/train/engines.py)
    amp: str | None = None  # "bf16" / "fp16": the clean forward and attack steps in reduced precision
    deterministic: bool = False
    data_dir: str | None = None
    download: bool = True
    progress: bool | None = None  # None: a bar when stderr is a terminal, else one line per epoch
    plots: bool = True
    log: Callable[[str], None] = field(default=lambda s: print(s, file=sys.stderr, flush=True))


class Interrupted(Exception):
    """Raised after an interrupted run has been checkpointed."""

    def __init__(self, run_dir: Path, epoch: int, batch: int):
        super().__init__(f"interrupted at epoch {epoch}, batch {batch}")
        self.run_dir, self.epoch, self.batch = run_dir, epoch, batch


def _quiet(message: str) -> None:
    pass


AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: str | None, engine: str = "torch") -> torch.dtype | None:
    """The reduced precision called ``amp`` (``bf16``, ``fp16`` or None), for the torch engine only."""
    if amp is None:
        return None
    if amp not in AMP:
        raise AbsnetError(Diagnostic("E606", f"unknown --amp {amp!r}", help="use --amp bf16 or --amp fp16"))
    if engine != "torch":
        raise AbsnetError(Diagnostic("E606", f"--amp runs with --engine torch, not {engine}",
                                     help="drop --amp: training-step graphs run in float32"))
    return AMP[amp]


def derive_seed(seed: int, epoch: int, stream: str) -> int:
    """A seed for one random stream of one epoch (stable across runs and platforms)."""
    return random.Random(f"absnet/{seed}/{epoch}/{stream}").getrandbits(63)


def build_network(cfg: TrainConfig, device: str = "cpu") -> Any:
    """The AbstractNetwork of a training config, initialised from the config's seed."""
    from absnet.backends.torch.network import AbstractNetwork
    from absnet.passes.pipeline import lower

    graph, _ = lower(cfg.text, file=cfg.file, network=cfg.network, args=cfg.network_args)
    return AbstractNetwork(graph, source=cfg.text, seed=cfg.seed).to(device)


def check_data_fits(net: Any, cfg: TrainConfig, info: Any) -> None:
    """E606 when the dataset's image shape or class count does not match the network."""
    shape, classes = tuple(info.input_shape), info.classes
    problems = []
    if tuple(net.input_shape) != shape:
        problems.append(f"inputs of shape {list(shape)} but network {net.name} expects {list(net.input_shape)}")
    if tuple(net.output_shape) != (classes,):
        problems.append(f"{classes} classes but network {net.name} has {list(net.output_shape)} outputs")
    if problems:
        hint = f"instantiate the network for this data, e.g. network {net.name}(in_ch={shape[0]}"
        hint += f", size={shape[-1]}, classes={classes})" if len(shape) == 3 else f", classes={classes})"
        raise AbsnetError(Diagnostic("E606", f"dataset {info.name} has " + " and ".join(problems), help=hint))


class Trainer:
    """Runs one training config into a run directory."""

    def __init__(self, cfg: TrainConfig, opts: TrainOptions):
        from absnet.data import Loader, load_split

        self.cfg, self.opts = cfg, opts
        if opts.deterministic:
            torch.use_deterministic_algorithms(True)
        self.device = torch.device(opts.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise AbsnetError(Diagnostic("E606", "--device cuda was asked for but torch sees no CUDA device",
                                         help="run with --device cpu, or install a CUDA build of torch"))
        self.net = build_network(cfg, opts.device)
        self.dist = distributed.info()
        rank, world = self.dist.rank, self.dist.world
        if not self.dist.is_main:  # rank 0 speaks for the job
            opts.log = _quiet
        d = cfg.data
        self.train_split = load_split(d.name, "train", data_dir=opts.data_dir, download=opts.download)
        self.test_split = load_split(d.name, "test", data_dir=opts.data_dir, download=opts.download)
        check_data_fits(self.net, cfg, self.train_split.info)
        self.data_gen = torch.Generator()
        self.global_batch = d.batch * cfg.accumulate * world  # examples per optimiser step, all ranks
        self.train_loader = Loader(self.train_split, self.global_batch, shuffle=True, generator=self.data_gen,
                                   augment=d.augment, limit=d.train_size, device=self.device, rank=rank, world=world)
        self.test_loader = Loader(self.test_split, d.test_batch * world, shuffle=False, limit=d.test_size,
                                  device=self.device, rank=rank, world=world)
        self.optimizer = cfg.optimizer.build(self.net.parameters())
        self.engine = build_engine(opts.engine, self.net, self.optimizer, cfg, device=opts.device, log=opts.log)
        self.amp = amp_dtype(opts.amp, opts.engine)
        bounds = str(next(self.net.parameters()).dtype).removeprefix("torch.")
        self.precision = {"attacks_and_clean_forward": str(self.amp or bounds).removeprefix("torch."),
                          "bounds_and_training_loss": bounds}
        if self.amp is not None:
            opts.log(f"precision: attack steps and the clean forward in {self.precision['attacks_and_clean_forward']}; "
                     f"every bound (training losses and certificates) in {bounds}")
        has_bn = any(node.op.startswith("BatchNorm") for node in self.net.graph.nodes())
        if self.dist.enabled and cfg.sync_bn:
            distributed.check_sync_bn(cfg.goal)
            self.net.stat_reduce = distributed.all_reduce_sum_differentiable
        elif self.dist.enabled and has_bn:
            opts.log(f"note: BatchNorm normalises with each of the {world} processes' own batch statistics "
                     "(add 'sync_bn true' to the train block for the global batch's); the running statistics "
                     "are rank 0's")
        self.base_lr = float(cfg.optimizer.args["lr"])
        self.goal_gen = torch.Generator()
        self.goal_rng = random.Random(cfg.seed)
        self.epoch = 0  # completed epochs
        self.batch = 0  # batches done in the next epoch (non-zero only after an interruption)
        self.examples = 0  # examples (all ranks) done in the next epoch: the world-size-free position
        self._own_streams = True  # False after restoring another world size's checkpoint on a rank > 0
        self.partial = {"loss": 0.0, "correct": 0, "n": 0, "seconds": 0.0}
        self.best: dict[str, Any] = {}
        self._stop = False

    # ------------------------------------------------------------------ run directory and checkpoints
    def open_run(self) -> None:
        from absnet.train.metrics import MetricsLog
        from absnet.train.rundir import RunDir, create_run_dir, environment, open_run_dir, write_spec_copy

        main = self.dist.is_main
        if self.opts.resume is not None:
            self.run = open_run_dir(self.opts.resume)
            self._restore()
        elif main:
            self.run = create_run_dir(self.opts.out, self.cfg.name)
            imports = {}
            if self.cfg.module is not None and self.cfg.module.sources is not None:
                imports = {f: t for f, t in self.cfg.module.sources.texts.items() if f != self.cfg.file}
            write_spec_copy(self.run, self.cfg.text, imports)
            self.run.write_json("resolved.json", self.cfg.to_json())
        if self.dist.enabled and self.opts.resume is None:  # the other ranks learn the folder rank 0 made
            self.run = RunDir(Path(distributed.broadcast_object(str(self.run.path) if main else None)))
        self.metrics = MetricsLog(self.run.path / "metrics.jsonl")
        if main:
            self.run.write_json("env.json", {**environment(), "world_size": self.dist.world,
                                             "precision": self.precision})
            self.metrics.truncate_after(self.epoch)

    def _state(self, ranks: list[Any] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
        from absnet.train.checkpoint import pack_state, spec_hash

        meta = {"epoch": self.epoch, "batch": self.batch, "examples": self.examples,
                "global_batch": self.global_batch, "world_size": self.dist.world,
                "partial": dict(self.partial), "best": self.best,
                "spec_hash": spec_hash(self.cfg.text), "train": self.cfg.name, "network": self.cfg.network,
                "seed": self.cfg.seed, "time": self.epoch + self.batch / max(len(self.train_loader), 1),
                "resolved": self.cfg.to_json()}
        gens, rngs = {"goal": self.goal_gen, "net": self.net.rng}, {"goal": self.goal_rng}
        for r, (goal, net, schedules) in enumerate(ranks or []):  # the other ranks' streams, as <name>@rank<r>
            if r:
                gens[f"goal@rank{r}"], gens[f"net@rank{r}"] = torch.Generator(), torch.Generator()
                gens[f"goal@rank{r}"].set_state(goal)
                gens[f"net@rank{r}"].set_state(net)
                rngs[f"goal@rank{r}"] = random.Random()
                rngs[f"goal@rank{r}"].setstate(schedules)
        return pack_state(self.net, self.optimizer, gens, rngs, meta)

    def save(self, name: str = "last") -> Path:
        from absnet.train.checkpoint import save_checkpoint

        self.engine.sync()
        path = self.run.checkpoints / f"{name}.safetensors"
        ranks = None
        if self.dist.enabled:  # the ranks' own random streams, so a mid-epoch stop resumes exactly
            ranks = distributed.all_gather_object((self.goal_gen.get_state(), self.net.rng.get_state(),
                                                   self.goal_rng.getstate()))
        if self.dist.is_main:  # every rank holds the same weights and optimiser state
            tensors, meta = self._state(ranks)
            save_checkpoint(path, {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, meta)
        distributed.barrier()  # no rank runs ahead of a checkpoint it might need
        return path

    def _restore(self) -> None:
        from absnet.train.checkpoint import load_checkpoint, spec_hash, unpack_state

        path = self.run.checkpoints / "last.safetensors"
        tensors, meta = load_checkpoint(path)
        old = {k: v for k, v in (meta.get("resolved") or {}).items() if k not in ("epochs", "file", "overrides")}
        new = {k: v for k, v in self.cfg.to_json().items() if k not in ("epochs", "file", "overrides")}
        if old != new:
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            raise AbsnetError(Diagnostic(
                "E605", f"{self.run.path} was trained with different settings ({', '.join(changed)}) than "
                f"{self.cfg.file} gives now: resuming would mix two experiments, so nothing was changed",
                help=f"resume with the same spec and --set options (the run's copy is {self.run.path / 'spec.absnet'}"
                     "), or start a new run; only 'epochs' may change when resuming",
            ))
        if meta.get("spec_hash") != spec_hash(self.cfg.text):
            self.opts.log(f"note: {self.cfg.file} differs from the text the run started with (the resolved "
                          "settings are the same)")
        unpack_state(tensors, meta, self.net, self.optimizer, {"goal": self.goal_gen, "net": self.net.rng},
                     {"goal": self.goal_rng})
        self.engine.load()
        r = self.dist.rank
        self._own_streams = r == 0 or (meta.get("world_size") == self.dist.world and f"rng.goal@rank{r}" in tensors)
        if r and self._own_streams:
            self.goal_gen.set_state(tensors[f"rng.goal@rank{r}"].to("cpu", torch.uint8).contiguous())
            self.net.rng.set_state(tensors[f"rng.net@rank{r}"].to("cpu", torch.uint8).contiguous())
            version, internal, gauss = meta["py_rng"][f"goal@rank{r}"]
            self.goal_rng.setstate((version, tuple(internal), gauss))
        self.epoch, self.batch = int(meta["epoch"]), int(meta["batch"])
        # older checkpoints count batches of data.batch examples (one process, no accumulation)
        self.examples = int(meta.get("examples", self.batch * self.cfg.data.batch))
        if self.examples and meta.get("global_batch", self.cfg.data.batch) != self.global_batch:
            self.opts.log(f"note: the run stopped after {self.examples} examples of epoch {self.epoch + 1} with "
                          f"global batches of {meta.get('global_batch', self.cfg.data.batch)}; it continues there "
                          f"with batches of {self.global_batch} (not bit-identical to an uninterrupted run)")
        self.partial = dict(meta.get("partial") or self.partial)
        self.best = dict(meta.get("best") or {})
        self.opts.log(f"resuming {self.run.path} at epoch {self.epoch + 1}, batch {self.batch + 1}")

    # ------------------------------------------------------------------ training
    def run_all(self) -> dict[str, Any]:
        """Train the remaining epochs; return the summary."""
        from absnet.train.metrics import summarize

        self.open_run()
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            while self.epoch < self.cfg.epochs:
                self._train_epoch(self.epoch + 1)
                self._after_epoch(self.epoch)
        finally:
            signal.signal(signal.SIGINT, previous)
        summary: dict[str, Any] = {}
        if self.dist.is_main:  # the other ranks may be on machines without the run folder
            summary = summarize(self.metrics.records())
        summary.update({"run_dir": str(self.run.path), "best": self.best, "train": self.cfg.name})
        if self.dist.is_main:
            self.run.write_json("summary.json", summary)
            if self.opts.plots:
                self._plots()
        return summary

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._stop:  # a second Ctrl-C: stop now, the last complete checkpoint stays
            raise KeyboardInterrupt
        self._stop = True
        self.opts.log("\ninterrupt: finishing this batch and saving a checkpoint (Ctrl-C again to abort)")

    def _train_epoch(self, epoch: int) -> None:
        from absnet.goals.base import GoalContext

        cfg, net, rank = self.cfg, self.net, self.dist.rank
        n = len(self.train_loader)
        G = self.global_batch
        pos = self.examples  # examples of this epoch done before (all ranks)
        skip = pos // G
        streams = ((self.goal_gen.manual_seed, "goal"), (net.rng.manual_seed, "net"), (self.goal_rng.seed, "schedules"))
        if pos == 0:
            for reseed, stream in streams:
                reseed(derive_seed(cfg.seed, epoch, distributed.rank_stream(stream, rank)))
            self.partial = {"loss": 0.0, "correct": 0, "n": 0, "seconds": 0.0}
        elif not self._own_streams:  # a checkpoint of another world size: restart from here
            for reseed, stream in streams:
                reseed(derive_seed(cfg.seed, epoch, f"{distributed.rank_stream(stream, rank)}@{pos}"))
        self.data_gen.manual_seed(derive_seed(cfg.seed, epoch, "data"))
        lr = cfg.lr_schedule.lr(self.base_lr, epoch - 1, cfg.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        net.train()
        bar = self._bar(epoch, n, skip)
        start = time.perf_counter()
        eps = 0.0
        sizes = self.train_loader.batch_sizes(pos)
        for (x, y), size in zip(self.train_loader.epoch(start_example=pos), sizes):
            i = pos // G  # the batch's index (fractional positions only after a resume with another batch)
            t = (epoch - 1) + min((pos / G + 1) / n, 1.0)
            net.time = t
            eps = cfg.epsilon.value(t, self.goal_rng)
            ctx = GoalContext(net=net, time=t, epsilon=eps, rng=self.goal_rng, generator=self.goal_gen,
                              amp=self.amp)
            # total: the engine weighs this rank's part by its share of the step's global batch
            value, correct = self.engine.step(ctx, x, y, lr, check=partial(self._nonfinite, epoch=epoch, i=i, n=n),
                                              total=size)
            pos += size
            p = self.partial
            p["loss"] += value * size
            p["correct"] += correct
            p["n"] += size
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{p['loss'] / p['n']:.4f}", acc=f"{100 * p['correct'] / p['n']:.1f}%",
                                eps=f"{eps:.4g}", refresh=False)
            if self.dist.enabled:  # stop together: a Ctrl-C may reach the ranks at different batches
                self._stop = distributed.any_rank(self._stop)
            if self._stop:
                self.partial["seconds"] += time.perf_counter() - start
                self.epoch, self.batch, self.examples = epoch - 1, i + 1, pos
                path = self.save()
                if bar is not None:
                    bar.close()
                self.opts.log(f"saved {path} (epoch {epoch}, batch {i + 1} of {n})")
                raise Interrupted(self.run.path, epoch, i + 1)
        if bar is not None:
            bar.close()
        self.engine.sync()
        p = self.partial
        p["seconds"] += time.perf_counter() - start
        self.epoch, self.batch, self.examples = epoch, 0, 0
        self.last_train = {"epoch": epoch, "time": float(epoch), "kind": "train",
                           "train/loss": p["loss"] / max(p["n"], 1), "train/acc": p["correct"] / max(p["n"], 1),
                           "epsilon": eps, "lr": lr, "epoch_time": p["seconds"]}
        if bar is None:
            self.opts.log(f"epoch {epoch}/{cfg.epochs}  loss {self.last_train['train/loss']:.4f}  "
                          f"acc {100 * self.last_train['train/acc']:.2f}%  eps {eps:.4g}  lr {lr:.3g}  "
                          f"{p['seconds']:.1f}s")

    def _bar(self, epoch: int, n: int, skip: int) -> Any:
        show = self.opts.progress if self.opts.progress is not None else sys.stderr.isatty()
        if not show or not self.dist.is_main:
            return None
        from tqdm import tqdm

        return tqdm(total=n, initial=skip, desc=f"epoch {epoch}/{self.cfg.epochs}", file=sys.stderr,
                    leave=False, dynamic_ncols=True)

    def _nonfinite(self, value: float, epoch: int, i: int, n: int) -> None:
        last = self.run.checkpoints / "last.safetensors"
        kept = f"the last good checkpoint {last} (epoch {self.epoch}) is kept" if last.exists() else \
            "no checkpoint had been written yet"
        raise AbsnetError(Diagnostic(
            "E607", f"the training loss became {value} at epoch {epoch}, batch {i + 1} of {n} (goal "
            f"{self.cfg.goal}); the run stopped and {kept}",
            help="lower the learning rate, add 'grad_clip 1.0', or ramp epsilon more slowly (e.g. epsilon Lin(0, "
                 "0.1, 10))",
        ))

    def _after_epoch(self, epoch: int) -> None:
        main = self.dist.is_main
        if main:
            self.metrics.append(self.last_train)
        cfg = self.cfg
        every = cfg.test_every
        if epoch == cfg.epochs or (every and epoch % every == 0):
            reports = self.test(epoch)
            record = {"epoch": epoch, "time": float(epoch), "kind": "test", "epsilon": cfg.test_epsilon}
            for r in reports:
                record.update(r.metrics())
            if main:
                self.metrics.append(record)
            self._update_best(reports, epoch)
        self.save()
        if self._stop:
            raise Interrupted(self.run.path, epoch, 0)

    def test(self, epoch: int) -> list[Any]:
        from absnet.train.evaluate import evaluate, format_table

        seed = derive_seed(self.cfg.seed, epoch, distributed.rank_stream("test", self.dist.rank))
        reports = evaluate(self.net, self.cfg.tests, lambda: self.test_loader.epoch(), epsilon=self.cfg.test_epsilon,
                           time_=float(epoch), seed=seed, gather=self.dist.enabled)
        self.opts.log(f"tests after epoch {epoch}:\n{format_table(reports)}")
        self.last_reports = reports
        return reports

    def _update_best(self, reports: list[Any], epoch: int) -> None:
        """Keep checkpoints/best: the highest certified (else attack) accuracy once ε has its final value."""
        eps = self.cfg.epsilon
        if not reports or eps.value(float(epoch), random.Random(0)) < eps.bounds()[1]:
            return
        key = next((r for r in reports if r.analysis not in ("point", "attack")), reports[0])
        if key.safe == key.safe and key.safe >= self.best.get("value", -1.0):
            self.best = {"epoch": epoch, "goal": key.goal, "value": key.safe}
            self.save("best")

    def _plots(self) -> None:
        from absnet.train.plots import plots_available, write_plots

        if not plots_available():
            self.opts.log("note: no plots (matplotlib is not installed: pip install 'absnet[plots]')")
            return
        write_plots(self.metrics.records(), self.run.path)
