"""`train.amp`, `train.channels_last` and `train.compile` = auto: the faster settings, chosen once per run.

    cfg, choice = resolve(cfg, model, splits, train_loader, ctx)   # in engine.Run, before any wrapping
    choice.save(run_dir)                                            # speed.json beside config.yaml

Nothing here writes config.yaml: `resolve` returns the decided config, and the trial that
decides compile=auto mid-run hands its outcome to the run (compile_model's `record`), which writes it.

`resolve` turns every `auto` into a concrete value for this device and model, before the
model is converted, wrapped in DDP or compiled, and returns a copy of the config holding
those values: the run's config.yaml and summary.json record them (summary.json and
speed.json also say why), so `selfreg train RUN/config.yaml` reruns with the same settings,
and a resumed run keeps what it started with (from speed.json, even where a sweep wrote
`auto` back into config.yaml). Explicit values are never changed.

The rules, and the measurements they come from (the project's 2-core Xeon with AVX-512 bf16
and no AMX, batch 128 at 32x32, one SGD step; ratios over eager fp32 NCHW; see docs/performance.md):

- amp: on CUDA, bf16 autocast where the GPU has bf16 units (compute capability 8.0 and later:
  Ampere and newer; a V100 or T4 only emulates bf16, slower than fp32), else none (fp16 needs
  a loss scaler and can overflow: ask for it explicitly). On the CPU, none:
  bf16 autocast made a resnet20 step 1.20x slower and rrnet20_gru light's 1.04-1.18x
  (only rrnet20_lstm light gained, 0.82x); CPUs with AMX were not measured, so not assumed.
- channels_last: a probe. When the run is long enough that a few extra steps cost under 1%
  of it (`PROBE_SHARE`), a copy of the model trains `PROBE_ROUNDS` steps in each layout on a
  random batch of the run's shape (interleaved, after warm-up, medians; the global RNG is
  restored and the run's model is untouched), and
  the faster layout wins by at least `MARGIN`, else the device's default: NCHW on the CPU,
  channels_last on CUDA (the standard choice for convolutions under autocast). Measured on the
  CPU: NHWC 0.85x for resnet20, 0.97x rrnet20_gru light, but 1.15x for rrnet20_lstm light
  (before the light cells were computed one gate at a time in the input's layout; since then
  NHWC measured faster for both cells, docs/performance.md), hence a probe and not a rule. Too short a run: the default. The probe's (eager) layout also
  serves a compiled run: compiled resnet20 measured the same in both layouts, and
  rrnet20_gru, whose compiled NHWC was 1.27x slower, probes NCHW anyway; and should the
  compile trial keep eager, the layout is the eager winner.
- compile: only when it pays back. Cold compiles cost 15-80 s on a quiet 2-core Xeon (up to
  200 s under load) and saved 25% (resnet20) or 10% (rrnet20_gru) of a step there; on the
  2-core AMD EPYC a quiet cold compile of rrnet20_gru took 101 s, and compiled steps were
  1.08x (resnet20) and 0.96x (rrnet20_gru) of eager in NCHW, while in channels_last the
  compiled rrnet20_gru was slower than eager (docs/performance.md: compile_precision.py,
  step_time.py --compile), which the trial below catches. So `auto`
  compiles when the probe's step time x the run's steps x `COMPILE_GAIN` is at least
  `PAYBACK` x `COMPILE_COST_S` (cost taken at the high end, saving at the low end). A run too
  short to probe never compiles, so auto never makes a short run slower. On CUDA the same
  rule with assumed numbers until benchmarks/gpu_check.py has measured them. Once chosen, a
  trial in the run itself (`CompileTrial`: its first steps eager, the next compiled, each
  timed) keeps compiled only when it measured faster, so a model that compiles no faster
  (rrnet20_gru on a loaded CPU measured 1.04x) loses at most the compile, which the rule
  bounds to a twentieth of the run. A compiled run compiles one graph, the one the rule
  counts (`Compiled`: static shapes for the run's batch size; the epoch's short last batch and
  evaluation run eager), and BN momentum "dynamic" changes no Python constant (train/bn.py).

Under torchrun, rank 0 decides and every rank uses its choice.
"""
from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from . import compile_cache
from . import distributed as dist_utils
from .precision import make_autocast

AUTO = "auto"
KEYS = ("amp", "channels_last", "compile")
RECORD = "speed.json"

PROBE_ROUNDS = 3          # timed steps per layout (interleaved), after WARMUP steps each
WARMUP = {"cpu": 1, "cuda": 2}
PROBE_SHARE = 0.01        # probe only when its steps are at most this share of the run's steps
MARGIN = 0.03             # a layout must be this much faster to beat the device's default
DEFAULT_CHANNELS_LAST = {"cpu": False, "cuda": True}
COMPILE_COST_S = {"cpu": 180.0, "cuda": 90.0}   # cold compile, high end (CPU: 101 s quiet, ~200 s loaded)
COMPILE_GAIN = {"cpu": 0.10, "cuda": 0.10}      # saving per step, low end
PAYBACK = 2.0


_MEMO: dict[tuple, "SpeedChoice"] = {}


@dataclass
class SpeedChoice:
    """What a run uses for the three speed keys, what its config asked, and why."""
    amp: str
    channels_last: bool
    compile: bool
    asked: dict = field(default_factory=dict)
    how: dict = field(default_factory=dict)
    probe: dict | None = None
    device: str = "cpu"
    compile_cache: str | None = None
    trial: dict | None = None          # compile=auto's measured eager vs compiled steps (CompileTrial)
    # Compile was chosen by auto in this run's config and not yet tried: compile_model runs a trial.
    # The same on every rank (from the config and rank 0's choice); not part of the record.
    trial_due: bool = False

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("trial_due")
        return out

    def save(self, run_dir: str | Path) -> None:
        """speed.json in the run folder."""
        (Path(run_dir) / RECORD).write_text(json.dumps(self.summary(), indent=2))


def asked(cfg: Config) -> dict:
    return {k: getattr(cfg.train, k) for k in KEYS}


def is_auto(cfg: Config) -> bool:
    return any(v == AUTO for v in asked(cfg).values())


def resolve(cfg: Config, model: nn.Module, splits, train_loader, ctx: dist_utils.DistContext | None = None,
            resume: str | Path | None = None, log: Callable[[str], None] = print) -> tuple[Config, SpeedChoice]:
    """A copy of `cfg` with every auto speed key made concrete, and the record of the choice.

    `model` must already be on the run's device and not yet converted or wrapped.
    """
    ctx = ctx or dist_utils.DistContext()
    device = ctx.device
    wanted = asked(cfg)
    if not is_auto(cfg):   # explicit values (a resumed run's config.yaml holds them): keep its record's reasons
        choice = (_kept(resume, wanted) if ctx.is_main else None) or SpeedChoice(
            wanted["amp"], bool(wanted["channels_last"]), bool(wanted["compile"]), asked=wanted,
            how={k: "set in the config" for k in KEYS}, device=device.type)
    else:
        choice = None
        if ctx.is_main:  # rank 0 decides (or reads what the run started with); every rank then uses its choice
            choice = _kept(resume, wanted)
            if choice is None:
                choice = _decide_once(cfg, wanted, model, splits, train_loader, ctx)
                log("speed: " + ", ".join(f"train.{k}={getattr(choice, k)} ({choice.how[k]})"
                                          for k in KEYS if wanted[k] == AUTO))
        choice = _agree(ctx, choice, wanted)
        choice.trial_due = bool(choice.compile and wanted["compile"] == AUTO and choice.trial is None)
    if choice.compile:
        choice.compile_cache = str(compile_cache.configure())
    return with_choice(cfg, choice), choice


def _decide_once(cfg: Config, wanted: dict, model: nn.Module, splits, train_loader,
                 ctx: dist_utils.DistContext) -> SpeedChoice:
    """`decide` for this run; seeds of one recipe in one process (fit_seeds, a sweep) share one probe."""
    shape = _input_shape(splits)
    batch = max(1, cfg.data.batch_size // max(1, ctx.world_size))
    steps = cfg.train.epochs * len(train_loader)
    key = (str(ctx.device), type(model).__name__, sum(p.numel() for p in model.parameters()), shape, batch,
           steps, tuple(wanted.items()), torch.get_num_threads())
    if key not in _MEMO:
        _MEMO[key] = decide(wanted, model, ctx.device, shape, splits.num_classes, batch, steps)
    return copy.deepcopy(_MEMO[key])


def decide(wanted: dict, model: nn.Module, device: torch.device, shape: tuple[int, int, int], num_classes: int,
           batch: int, steps: int) -> SpeedChoice:
    """The choice for one process: rules for amp, the probe for layout and step time, pay-back for compile."""
    kind = device.type if device.type in DEFAULT_CHANNELS_LAST else "cpu"
    how: dict[str, str] = {}

    amp = wanted["amp"]
    if amp == AUTO:
        amp, how["amp"] = _amp_rule(device)
    else:
        how["amp"] = "set in the config"

    probe = None
    layouts = [False, True] if wanted["channels_last"] == AUTO else [bool(wanted["channels_last"])]
    probe_steps = len(layouts) * (WARMUP[kind] + PROBE_ROUNDS)
    if (wanted["channels_last"] == AUTO or wanted["compile"] == AUTO) and probe_steps <= PROBE_SHARE * steps:
        try:
            probe = probe_layouts(model, device, shape, num_classes, batch, amp, layouts, WARMUP[kind])
        except Exception as exc:  # an op without an NHWC kernel, out of memory, ...: fall back to the rules
            probe = {"error": f"{type(exc).__name__}: {str(exc)[:120]}"}
    timed = (probe or {}).get("ms_per_step", {})
    short = f"the run's {steps} steps are too few to pay for a probe of {probe_steps}"

    compile_ = wanted["compile"]
    if compile_ == AUTO:
        if not timed:
            compile_ = False
            how["compile"] = short if probe is None else f"probe failed ({probe['error']}): eager"
        else:
            step_s = min(timed.values()) / 1e3
            eager_s = step_s * steps
            saving, cost = eager_s * COMPILE_GAIN[kind], COMPILE_COST_S[kind]
            compile_ = saving >= PAYBACK * cost
            how["compile"] = (f"eager run about {eager_s:.0f} s ({steps} steps x {step_s * 1e3:.0f} ms); "
                              f"a {COMPILE_GAIN[kind]:.0%} saving ({saving:.0f} s) "
                              f"{'pays' if compile_ else 'does not pay'} {PAYBACK:g}x a {cost:.0f} s cold compile")
    else:
        compile_ = bool(compile_)
        how["compile"] = "set in the config"

    channels_last = wanted["channels_last"]
    if channels_last == AUTO:
        default = DEFAULT_CHANNELS_LAST[kind]
        if len(timed) == 2:
            nchw, nhwc = timed["NCHW"], timed["channels_last"]
            if default:
                channels_last = not nchw <= (1 - MARGIN) * nhwc
            else:
                channels_last = nhwc <= (1 - MARGIN) * nchw
            how["channels_last"] = (f"probe: channels_last {nhwc:.1f} ms vs NCHW {nchw:.1f} ms per step "
                                    f"(ratio {nhwc / nchw:.2f}; default {'channels_last' if default else 'NCHW'} "
                                    f"unless the other is {MARGIN:.0%} faster)")
        else:
            channels_last = default
            why = short if probe is None else f"probe failed ({probe['error']})"
            how["channels_last"] = f"{why}: the {device.type} default, {'channels_last' if default else 'NCHW'}"
    else:
        channels_last = bool(channels_last)
        how["channels_last"] = "set in the config"
    return SpeedChoice(amp, channels_last, compile_, asked=dict(wanted), how=how, probe=probe, device=device.type)


def _amp_rule(device: torch.device) -> tuple[str, str]:
    if device.type == "cuda":
        if cuda_has_bf16(device):
            return "bf16", "rule: bf16 autocast on a GPU with bf16 units (compute capability 8.0 or later)"
        major, minor = torch.cuda.get_device_capability(device)
        return "none", (f"rule: this GPU (compute capability {major}.{minor}) has no bf16 units (only emulated bf16, "
                        "slower than fp32); fp16 needs a loss scaler, so set train.amp=fp16 to use it")
    if device.type == "cpu":
        return "none", "rule: fp32 on the CPU (bf16 autocast measured 1.2x slower without AMX)"
    return "none", f"rule: fp32 on {device.type}"


def cuda_has_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: Ampere (compute capability 8.0) and newer, or ROCm.

    Not `torch.cuda.is_bf16_supported()`: by default it also counts emulation, which a V100 or T4
    passes (bf16 autocast runs there, slower than fp32), and it asks about the current device, not
    the run's."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device) >= (8, 0)


def probe_layouts(model: nn.Module, device: torch.device, shape: tuple[int, int, int], num_classes: int,
                  batch: int, amp: str, layouts: list[bool], warmup: int) -> dict:
    """Median training-step milliseconds of copies of `model` in each layout; see the module doc."""
    autocast = make_autocast(amp, device)
    start = time.perf_counter()
    names = {False: "NCHW", True: "channels_last"}
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):   # dropout etc. draw here; the run's RNG stays as it was
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, *shape, generator=g).to(device)
        y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
        steps = {}
        for cl in layouts:
            fmt = torch.channels_last if cl else torch.contiguous_format
            copy_ = copy.deepcopy(model).train().to(memory_format=fmt)
            opt = torch.optim.SGD(copy_.parameters(), lr=1e-3, momentum=0.9)
            steps[cl] = _stepper(copy_, opt, x.contiguous(memory_format=fmt), y, autocast, device)
        # No cap in seconds: decide() probes only runs whose steps are 100x the probe's, so a
        # slow step (rrnet20_gru, 1.2 s on the 2-core CPU) gets its layouts compared too.
        times: dict[bool, list[float]] = {cl: [] for cl in layouts}
        for cl in layouts:
            for _ in range(warmup):                  # the first step sets up kernels: not a step's cost
                steps[cl]()
        for r in range(PROBE_ROUNDS):
            for cl in layouts[r % len(layouts):] + layouts[:r % len(layouts)]:
                times[cl].append(steps[cl]())
    out = {"batch": batch, "input": list(shape), "amp": amp,
           "ms_per_step": {names[cl]: round(statistics.median(ts) * 1e3, 2) for cl, ts in times.items()},
           "seconds": round(time.perf_counter() - start, 2)}
    return out


def _stepper(model: nn.Module, opt, x, y, autocast, device: torch.device) -> Callable[[], float]:
    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0
    return step


def _input_shape(splits) -> tuple[int, int, int]:
    size = splits.image_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return splits.in_chans, int(h), int(w)


def _kept(resume: str | Path | None, wanted: dict) -> SpeedChoice | None:
    """On a resume, the choice the run started with (speed.json) for the keys its config leaves auto or
    sets to the same value; None without a record."""
    if resume is None:
        return None
    path = Path(resume) / RECORD
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    values, how = {}, dict(saved.get("how", {}))
    for k in KEYS:
        if wanted[k] == AUTO:
            values[k] = saved[k]
            if not how.get(k, "").startswith("kept from"):
                how[k] = f"kept from the run's start ({RECORD}): {how.get(k, '')}".rstrip(": ")
        else:
            values[k] = wanted[k]
            if values[k] != saved.get(k):
                how[k] = "set in the config"
    return SpeedChoice(values["amp"], bool(values["channels_last"]), bool(values["compile"]),
                       asked=saved.get("asked", dict(wanted)), how=how, probe=saved.get("probe"),
                       device=saved.get("device", "cpu"), trial=saved.get("trial"))


AMP_CODES = ("none", "bf16", "fp16")


def _agree(ctx: dist_utils.DistContext, choice: SpeedChoice | None, wanted: dict) -> SpeedChoice:
    """Rank 0's choice on every rank (a no-op in one process)."""
    if not ctx.enabled:
        return choice
    code = torch.zeros(4, dtype=torch.float64)
    if choice is not None:
        code = torch.tensor([AMP_CODES.index(choice.amp), float(choice.channels_last), float(choice.compile),
                             float(choice.trial is not None)], dtype=torch.float64)
    amp, cl, comp, tried = (int(v.item()) for v in dist_utils.all_reduce_sum(ctx, *code.unbind()))
    if choice is None:
        choice = SpeedChoice(AMP_CODES[amp], bool(cl), bool(comp), asked=dict(wanted),
                             how={k: "rank 0's choice" for k in KEYS}, device=ctx.device.type,
                             trial={"kept": "compiled" if comp else "eager", "from": "rank 0"} if tried else None)
    return choice


# ---------------------------------------------------------------------------------------
# compile=auto, once compiling looked worth it: measure it in the run itself

TRIAL_WARMUP = 3          # step intervals dropped at the start of each phase (the compile, warm-up)
TRIAL_STEPS = 8           # step intervals timed per phase


def compile_static(model: nn.Module):
    """torch.compile with static shapes (`dynamic=False`), as `Compiled` uses it.

    Why static: the only shapes a run's training forward sees are the batch size and, once an
    epoch, a shorter last batch; `Compiled` sends that one batch (and evaluation) through the
    eager model, so a run compiles one graph, the one autotune's pay-back rule counts. The
    default (`dynamic=None`) compiled a static graph, then a dynamic-shape graph for the short
    batch, then again for eval mode (and its batch size): 3-4 cold compiles a run, and
    dynamic-shape kernels for every step after the first epoch's last."""
    return torch.compile(model, dynamic=False, backend=BACKEND)


BACKEND = "inductor"        # torch.compile's backend (tests count compiles with a counting one)
COMPILER = compile_static   # what `Compiled` and `CompileTrial` compile with (tests put a stand-in here)


class Compiled(nn.Module):
    """The training model under train.compile: training batches of the run's batch size go
    through the compiled graph; anything else (the epoch's short last batch, evaluation) runs
    the same model eagerly, which is the same maths, without a second compile.

    Evaluation eager: a forward-only pass over the validation split is a few percent of a run's
    time, so compiling it (a second cold compile, in eval mode) would cost more than it saves.
    """

    def __init__(self, model: nn.Module, batch: int | None = None):
        super().__init__()
        self._orig_mod = model                          # engine.unwrap finds the plain model through it
        self.__dict__["_compiled"] = COMPILER(model)    # not a submodule: one set of parameters
        self.batch = batch                              # None: every training batch compiled

    def forward(self, *args, **kwargs):
        return (self._compiled if _takes_compiled(self, args) else self._orig_mod)(*args, **kwargs)


def _takes_compiled(wrapper: nn.Module, args: tuple) -> bool:
    """Whether a call of `Compiled` or `CompileTrial` may go through the compiled graph: training
    mode, and a batch of the size it was compiled for."""
    if not wrapper.training:
        return False
    x = args[0] if args else None
    return wrapper.batch is None or not isinstance(x, torch.Tensor) or x.shape[0] == wrapper.batch


def compile_model(model: nn.Module, choice: SpeedChoice, cfg: Config,
                  record: Callable[[SpeedChoice], None] = lambda choice: None,
                  ctx: dist_utils.DistContext | None = None) -> nn.Module:
    """The training model under train.compile: `Compiled`, or (compile chosen by auto) a `CompileTrial`.

    When the trial has decided, `choice` holds its outcome (compile false when it kept eager) and
    `record(choice)` is called on every rank: the run sets its config's train.compile and writes
    config.yaml / speed.json, so a rerun or a resume trains as the trial decided.
    """
    ctx = ctx or dist_utils.DistContext()
    if not choice.compile:
        return model
    batch = max(1, cfg.data.batch_size // max(1, ctx.world_size))    # each rank's training batch
    if not choice.trial_due:
        return Compiled(model, batch)

    def done(result: dict) -> None:
        choice.trial = result
        choice.how["compile"] += (f"; measured in the run: compiled {result['compiled_ms']:.1f} ms vs eager "
                                  f"{result['eager_ms']:.1f} ms per step, {result['kept']} kept")
        if result["kept"] == "eager":
            choice.compile = False
        record(choice)

    return CompileTrial(model, done, ctx, batch)


class CompileTrial(nn.Module):
    """Eager for the run's first steps, then compiled, each timed; then whichever was faster.

    A step's time is the interval between the starts of consecutive training-mode forward
    calls, so it holds everything a step costs in the real loop (data, backward, optimizer,
    logging); intervals spanning an evaluation or a batch of another size (the epoch's last)
    are dropped, and so are the first `TRIAL_WARMUP` of each phase (the compiled phase's first
    holds the compile). After `TRIAL_STEPS` timed intervals of each, compiled stays only when
    it is at least `MARGIN` faster (rank 0's measurement under DDP); `done(result)` records the
    outcome. The compile itself is paid either way, which the pay-back rule allowed for before
    choosing to compile. As in `Compiled`, evaluation and batches of another size run eager.
    """

    def __init__(self, model: nn.Module, done: Callable[[dict], None], ctx: dist_utils.DistContext | None = None,
                 batch: int | None = None):
        super().__init__()
        self._orig_mod = model                          # engine.unwrap finds the plain model through it
        self.__dict__.update(_compiled=COMPILER(model), _done=done, _ctx=ctx or dist_utils.DistContext())
        self.batch = batch
        self.phase, self.seen, self.last = "eager", 0, None
        self.times: dict[str, list[float]] = {"eager": [], "compiled": []}

    def forward(self, *args, **kwargs):
        if not _takes_compiled(self, args):            # evaluation, or the short last batch: eager
            self.last = None                            # (the next interval would include it)
            return self._orig_mod(*args, **kwargs)
        now = time.perf_counter()
        if self.phase in self.times:
            if self.last is not None:
                self.seen += 1
                if self.seen > TRIAL_WARMUP:
                    self.times[self.phase].append(now - self.last)
            if len(self.times[self.phase]) >= TRIAL_STEPS:
                self._next_phase()
        self.last = now
        compiled = self.phase in ("compiled", "done-compiled")
        return (self._compiled if compiled else self._orig_mod)(*args, **kwargs)

    def _next_phase(self) -> None:
        self.seen, self.last = 0, None
        if self.phase == "eager":
            self.phase = "compiled"
            return
        eager, compiled = (statistics.median(self.times[k]) for k in ("eager", "compiled"))
        vote = torch.tensor(float(compiled <= (1 - MARGIN) * eager) if self._ctx.is_main else 0.0)
        (vote,) = dist_utils.all_reduce_sum(self._ctx, vote)   # rank 0's verdict on every rank
        kept = "compiled" if vote.item() > 0 else "eager"
        self.phase = f"done-{kept}"
        self._done({"eager_ms": round(eager * 1e3, 2), "compiled_ms": round(compiled * 1e3, 2), "kept": kept,
                    "steps_timed": TRIAL_STEPS})


def with_choice(cfg: Config, choice: SpeedChoice) -> Config:
    out = copy.deepcopy(cfg)
    out.train.amp, out.train.channels_last, out.train.compile = choice.amp, choice.channels_last, choice.compile
    return out


__all__ = ["AUTO", "KEYS", "SpeedChoice", "resolve", "decide", "probe_layouts", "is_auto", "asked", "with_choice",
           "compile_model", "compile_static", "Compiled", "CompileTrial", "cuda_has_bf16"]
