"""Export a trained model: ONNX, TorchScript or safetensors, each checked against PyTorch.

    result = export(trained, "onnx", "model.onnx")
    result.max_abs_diff          # exported vs PyTorch on random inputs at batch sizes 1 and 3

Every exported graph has a dynamic batch axis: it is traced at batch EXPORT_BATCH and run
at CHECK_BATCHES (other sizes) for the check. The RegNet regulator's state starts in
forward as None (zeros, whose terms are skipped), so nothing batch-sized is baked in.
ONNX tries torch.onnx's dynamo exporter, then the TorchScript-based one ("auto"); a
model neither can export is a one-line error naming why.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import UserError
from ..weightfiles import Loaded, write_weights
from .trained import Trained, load_trained

EXPORT_BATCH = 2
CHECK_BATCHES = (1, 3)
# Exported graphs reorder float operations, so outputs differ by float32 rounding, which grows
# with the logits' size (untrained deep nets reach 1e6). A check passes when the difference is
# below TOLERANCE x max(1, largest |logit|): far above what a correct export shows (~1e-7
# relative) and far below what a wrong one does. Both sides compute in full float32: on a GPU
# the check turns TF32 off (cuDNN convolutions default to TF32, whose 10-bit mantissa differs
# from float32 by ~1e-3 relative; onnxruntime computes on the CPU in float32).
TOLERANCE = 1e-4
# ONNX protobufs stop at 2 GB; bigger models keep their weights in a side file.
ONNX_INLINE_BYTES = 1_800_000_000


@dataclass
class ExportResult:
    format: str
    path: Path
    files: list[Path] = field(default_factory=list)     # everything written
    max_abs_diff: float | None = None                   # None: not checked (say why in `note`)
    max_abs_logit: float = 0.0                          # the scale the difference is judged against
    checked_batches: tuple[int, ...] = ()
    exporter: str = ""
    note: str = ""


def example_input(trained: Trained, batch: int, seed: int = 0) -> torch.Tensor:
    h, w = trained.transform.image_size
    g = torch.Generator().manual_seed(seed)
    device = next(trained.model.parameters()).device
    return torch.randn(batch, trained.in_chans, h, w, generator=g).to(device)


def compare(run: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, trained: Trained,
            result: ExportResult) -> None:
    """Max |run(x) - model(x)| over random inputs at each of CHECK_BATCHES, into `result`;
    a UserError when it exceeds the tolerance."""
    worst, scale = 0.0, 0.0
    with torch.no_grad(), full_float32():
        for i, batch in enumerate(CHECK_BATCHES):
            x = example_input(trained, batch, seed=100 + i)
            ref = model(x).float().cpu()
            out = torch.as_tensor(run(x)).float().cpu()
            if out.shape != ref.shape:
                raise UserError(f"exported model gives shape {tuple(out.shape)} at batch {batch}, PyTorch "
                                f"{tuple(ref.shape)}: the batch axis is not dynamic")
            worst = max(worst, (out - ref).abs().max().item())
            scale = max(scale, ref.abs().max().item())
    result.max_abs_diff, result.max_abs_logit, result.checked_batches = worst, scale, CHECK_BATCHES
    if not worst <= TOLERANCE * max(1.0, scale):     # also catches NaN
        raise UserError(f"the {result.format} export of {trained.name} disagrees with PyTorch: max abs difference "
                        f"{worst:.3g} on logits up to {scale:.3g} (tolerance {TOLERANCE:g} x max(1, logits))")


@contextlib.contextmanager
def full_float32():
    """TF32 off for CUDA convolutions and matmuls while the block runs; the settings restored after.

    torch >= 2.9 has `fp32_precision` ("ieee" is full float32) beside the older `allow_tf32`
    flags, and refuses reads of one after writes of the other: the newer one where it exists."""
    conv, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision") and hasattr(getattr(conv, "conv", None), "fp32_precision"):
        saved = conv.conv.fp32_precision, matmul.fp32_precision
        conv.conv.fp32_precision, matmul.fp32_precision = "ieee", "ieee"
        try:
            yield
        finally:
            conv.conv.fp32_precision, matmul.fp32_precision = saved
        return
    saved = conv.allow_tf32, matmul.allow_tf32
    conv.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        conv.allow_tf32, matmul.allow_tf32 = saved


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160] if text else ''}"


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warnings; the command prints its own summary.

    torch's TorchScript-based ONNX exporter also dumps its whole IR graph from C++ when it
    fails (its log switch reads a function object as "enabled"), so file descriptors 1 and 2
    are pointed at /dev/null too while an exporter runs.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    try:
        with open(os.devnull, "w") as null, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            for fd in saved:
                os.dup2(null.fileno(), fd)
            warnings.simplefilter("ignore")
            yield
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


# ---------------------------------------------------------------------------- ONNX
def _onnx_dynamo(model: nn.Module, x: torch.Tensor, path: Path, opset: int | None) -> None:
    batch = torch.export.Dim("batch", min=1, max=65536)
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > ONNX_INLINE_BYTES
    torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: batch},), opset_version=opset, external_data=big, verbose=False)


def _onnx_legacy(model: nn.Module, x: torch.Tensor, path: Path, opset: int | None) -> None:
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=opset or 17, verbose=False)


ONNX_EXPORTERS: dict[str, Callable[..., None]] = {"dynamo": _onnx_dynamo, "legacy": _onnx_legacy}
EXPORTER_CHOICES = ("auto", *ONNX_EXPORTERS)


def _onnx_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.cpu().numpy()})[0])


def export_onnx(trained: Trained, path: Path, exporter: str = "auto", opset: int | None = None,
                check: bool = True) -> ExportResult:
    """Try each exporter in turn ("auto": dynamo, then legacy) until one gives a graph that
    onnxruntime runs at other batch sizes and that agrees with PyTorch."""
    try:
        import onnx  # noqa: F401  (both exporters need it)
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install 'selfreg[export]'") from None
    if exporter not in EXPORTER_CHOICES:
        raise UserError(f"unknown ONNX exporter {exporter!r}; valid: {', '.join(EXPORTER_CHOICES)}")
    model = trained.model.eval()
    failures = []
    for kind in (ONNX_EXPORTERS if exporter == "auto" else [exporter]):
        _remove_onnx(path)
        try:
            with _quiet():
                ONNX_EXPORTERS[kind](model, example_input(trained, EXPORT_BATCH), path, opset)
            result = ExportResult("onnx", path, _onnx_files(path), exporter=kind)
            if not check:
                return result
            run = _onnx_runner(path)
            if run is None:
                result.note = "onnxruntime is not installed: not checked (pip install onnxruntime)"
                return result
            compare(run, model, trained, result)
            return result
        except Exception as exc:  # an exporter's failure is a reason to try the next one
            failures.append(f"{kind} exporter: {_first_line(exc)}")
    _remove_onnx(path)
    raise UserError(f"{trained.name} cannot be exported to ONNX ({'; '.join(failures)})")


def _onnx_files(path: Path) -> list[Path]:
    return [p for p in (path, path.with_name(path.name + ".data")) if p.exists()]


def _remove_onnx(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".data")):
        p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- TorchScript
def export_torchscript(trained: Trained, path: Path, check: bool = True, **_) -> ExportResult:
    """torch.jit.trace at EXPORT_BATCH; shapes are traced as tensor ops, so the batch stays free."""
    model = trained.model.eval()
    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(model, example_input(trained, EXPORT_BATCH), check_trace=False)
            torch.jit.save(traced, str(path))
    except Exception as exc:
        path.unlink(missing_ok=True)
        raise UserError(f"{trained.name} cannot be exported to TorchScript ({_first_line(exc)})") from None
    result = ExportResult("torchscript", path, [path], exporter="torch.jit.trace")
    if check:
        with _quiet():
            loaded = torch.jit.load(str(path), map_location=next(model.parameters()).device)
        compare(loaded, model, trained, result)
    return result


# ---------------------------------------------------------------------------- safetensors
def export_safetensors(trained: Trained, path: Path, check: bool = True, **_) -> ExportResult:
    weights, sidecar = write_weights(Loaded(trained.name, trained.kwargs, trained.classes, trained.transform,
                                            trained.model.state_dict(), trained.data, trained.provenance,
                                            trained.imports), path)
    result = ExportResult("safetensors", weights, [weights, sidecar], exporter="safetensors")
    if check:
        device = next(trained.model.parameters()).device
        again = load_trained(weights, device=device).model
        compare(again, trained.model, trained, result)
    return result


# name -> (writer, file suffix)
FORMATS: dict[str, tuple[Callable[..., ExportResult], str]] = {
    "onnx": (export_onnx, ".onnx"),
    "torchscript": (export_torchscript, ".torchscript.pt"),
    "safetensors": (export_safetensors, ".safetensors"),
}


def default_path(checkpoint: Path, fmt: str) -> Path:
    """Next to the checkpoint: runs/x/checkpoints/best.pt -> runs/x/checkpoints/best.onnx."""
    return checkpoint.with_name(checkpoint.name.split(".")[0] + FORMATS[fmt][1])


def export(trained: Trained, fmt: str, path: str | Path | None = None, check: bool = True,
           **options) -> ExportResult:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    writer, _ = FORMATS[fmt]
    path = Path(path) if path is not None else default_path(trained.source, fmt)
    if path.resolve() == trained.source.resolve():
        raise UserError(f"refusing to overwrite the input {path}; pass -o OTHER_PATH")
    path.parent.mkdir(parents=True, exist_ok=True)
    return writer(trained, path, check=check, **options)
