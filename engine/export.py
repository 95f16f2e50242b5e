"""Export the serving expert adapters for vLLM, with the command that serves them.

``export_adapters(store_root, out_dir, base_model)`` copies each expert's *serving* version out of the
adapter store (``engine.adapter_store``) into the layout vLLM's ``--lora-modules`` expects::

    <out_dir>/<expert>/adapter_config.json        base_model_name_or_path = the served base model
    <out_dir>/<expert>/adapter_model.safetensors
    <out_dir>/manifest.json                       expert -> version, rank, sha256 (what was exported)
    <out_dir>/launch.sh                           vllm serve <base> --enable-lora ... --lora-modules ...

Each adapter is checked before it is exported, the way vLLM will check it when it loads (a bad adapter
fails at the server's start otherwise, far from its cause): a LoRA (not DoRA), no full-weight
``modules_to_save``, a rank within vLLM's ``--max-lora-rank`` choices, weights whose rank matches the
config, and, when the base model is a local directory, input widths that match its ``hidden_size``. An
expert that fails is skipped with the reason; the others are exported. ``launch.sh`` finds its adapters
next to itself, so the whole folder can be copied to the GPU host as it is.

Every expert is one LoRA module named after the expert, which is what ``engine.remote`` asks for.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.adapter_store import CONFIG_FILE, WEIGHTS_FILE, AdapterStore, sha256_file
from engine.api import Expert
from engine.errors import AdapterError

VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for ``--max-lora-rank`` (``vllm.config.lora.MaxLoRARanks``)."""
HIDDEN_INPUT_MODULES = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
"""Projections whose input is the residual stream, so their lora_A width must equal ``hidden_size``."""
MANIFEST_FILE = "manifest.json"
LAUNCH_FILE = "launch.sh"


class ExportError(AdapterError):
    """Nothing could be exported (every expert was skipped); the message lists why."""

    def __init__(self, reason: str) -> None:
        super().__init__("all", reason)


@dataclass(frozen=True, slots=True)
class ExportedAdapter:
    expert: str
    version: str
    path: Path
    rank: int
    target_modules: tuple[str, ...]
    sha256: str


@dataclass(slots=True)
class ExportReport:
    out_dir: Path
    base_model: str
    exported: dict[str, ExportedAdapter] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    """Expert -> why it was not exported (no serving version, unsupported by vLLM, wrong base model)."""
    warnings: list[str] = field(default_factory=list)
    max_lora_rank: int = 0
    command: list[str] = field(default_factory=list)
    """``vllm serve`` with absolute adapter paths (``launch.sh`` holds the relocatable form)."""
    launch_script: Path | None = None

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)

    def hexcore_env(self, url: str = "http://<gpu-host>:8000/v1") -> str:
        """The settings that point Hexcore at the server this command starts."""
        return f"HEXCORE_ENGINE_BACKEND=remote HEXCORE_ENGINE_REMOTE_URL={url}"

    def summary(self) -> str:
        lines = [
            f"exported {len(self.exported)} adapter(s) to {self.out_dir} for base model {self.base_model}"
        ]
        lines += [
            f"  {e}: {a.version} (r={a.rank}, {', '.join(a.target_modules)})"
            for e, a in self.exported.items()
        ]
        lines += [f"  {e}: skipped: {why}" for e, why in self.skipped.items()]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [
            "serve with:",
            f"  {self.command_line}",
            "then run Hexcore with:",
            f"  {self.hexcore_env()}",
        ]
        return "\n".join(lines)


def vllm_rank(rank: int) -> int:
    """The smallest ``--max-lora-rank`` value vLLM accepts that covers ``rank``."""
    for choice in VLLM_MAX_LORA_RANKS:
        if choice >= rank:
            return choice
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest --max-lora-rank ({VLLM_MAX_LORA_RANKS[-1]})")


def _hidden_size(base_model: str) -> int | None:
    """``hidden_size`` from a local base model directory's config.json (None when it is not local)."""
    config = Path(base_model).expanduser() / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    text = data.get("text_config") or data
    return text.get("hidden_size") if isinstance(text, dict) else None


def _weight_shapes(path: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    shapes = {}
    with safe_open(str(path), framework="pt") as fh:
        for name in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
            shapes[name] = list(fh.get_slice(name).get_shape())
    return shapes


def check_adapter(folder: Path, hidden_size: int | None = None) -> tuple[dict[str, Any], int, list[str]]:
    """Validate one adapter folder for vLLM: (its config, its largest rank, warnings). Raises ``ValueError``."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"unreadable {CONFIG_FILE}: {exc}") from exc
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ValueError(f"peft_type is {config.get('peft_type')!r}; vLLM serves LoRA adapters only")
    if config.get("use_dora"):
        raise ValueError("DoRA adapters are not served by vLLM's LoRA support")
    if config.get("modules_to_save"):
        raise ValueError(
            f"modules_to_save {config['modules_to_save']} holds full weights, which vLLM rejects"
        )
    ranks = [int(config.get("r") or 0), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
    rank = max(ranks)
    if rank < 1:
        raise ValueError("the adapter config has no rank r")
    vllm_rank(rank)  # raises when too large
    warnings = []
    if config.get("target_parameters"):
        warnings.append(
            f"targets parameters {config['target_parameters']} (fused MoE experts): only recent vLLM versions "
            "serve LoRA on MoE experts; check yours"
        )
    try:
        shapes = _weight_shapes(folder / WEIGHTS_FILE)
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"unreadable {WEIGHTS_FILE}: {exc}") from exc
    lora_a = {name: shape for name, shape in shapes.items() if ".lora_A." in name}
    if not lora_a:
        raise ValueError(f"{WEIGHTS_FILE} holds no lora_A weights")
    file_rank = max(shape[0] for shape in lora_a.values())
    if file_rank > rank:
        raise ValueError(f"weights have rank {file_rank} but the config says r={rank}")
    if hidden_size is not None:
        for name, shape in lora_a.items():
            module = name.split(".lora_A.")[0].rsplit(".", 1)[-1]
            if module in HIDDEN_INPUT_MODULES and len(shape) == 2 and shape[1] != hidden_size:
                raise ValueError(
                    f"{name} expects inputs of width {shape[1]}, but the base model's hidden_size is "
                    f"{hidden_size}: the adapter was trained on another base model"
                )
    return config, rank, warnings


def _replace_dir(tmp: Path, target: Path) -> None:
    """Put ``tmp`` at ``target``, replacing an older export (rename-based, so never half-written)."""
    old = target.with_name(f".old-{target.name}-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _launch_script(base_model: str, modules: dict[str, str], rank: int, extra_args: list[str]) -> str:
    """A bash script that serves the adapters in its own folder (relocatable: no absolute adapter paths)."""
    lora_modules = " ".join(
        f'{shlex.quote(name)}="$HERE"/{shlex.quote(rel)}' for name, rel in modules.items()
    )
    extra = " ".join(shlex.quote(a) for a in extra_args)
    return (
        "#!/usr/bin/env bash\n"
        "# Generated by `hexcore adapters export`: serve the base model with every expert as a LoRA module.\n"
        "# Extra arguments go to vllm (e.g. --tensor-parallel-size 2 --gpu-memory-utilization 0.9).\n"
        "# Point Hexcore at it: HEXCORE_ENGINE_BACKEND=remote HEXCORE_ENGINE_REMOTE_URL=http://<host>:${PORT:-8000}/v1\n"
        "set -euo pipefail\n"
        'HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"\n'
        f"exec vllm serve {shlex.quote(base_model)} \\\n"
        '  --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" \\\n'
        f"  --enable-lora --max-lora-rank {rank} --max-loras {len(modules)} \\\n"
        f"  --lora-modules {lora_modules} \\\n"
        f'  {extra + " " if extra else ""}"$@"\n'
    )


def export_adapters(
    store_root: Path | str,
    out_dir: Path | str,
    base_model_path: str | Path,
    *,
    experts: tuple[Expert | str, ...] | None = None,
    extra_args: tuple[str, ...] = (),
) -> ExportReport:
    """Export every expert's serving adapter to ``out_dir`` for vLLM and write ``launch.sh``.

    ``base_model_path`` is the base model as the GPU host's vLLM loads it (a local directory or a hub
    id); a local directory is also used to check the adapters' widths. Raises :class:`ExportError` when
    no expert could be exported. Writing is per expert and rename-based: a failed export leaves the
    previous one in place.
    """
    store = AdapterStore(store_root)
    out = Path(out_dir).expanduser().resolve()
    base = str(base_model_path)
    if Path(base).expanduser().is_dir():
        base = str(Path(base).expanduser().resolve())
    hidden = _hidden_size(base)
    report = ExportReport(out_dir=out, base_model=base)
    if hidden is None:
        report.warnings.append(f"{base} is not a local model directory: adapter widths were not checked")
    out.mkdir(parents=True, exist_ok=True)

    for expert in [Expert(e) for e in (experts or tuple(Expert))]:
        _export_one(store, expert, out, hidden, report)

    if not report.exported:
        reasons = "; ".join(f"{e}: {why}" for e, why in report.skipped.items())
        raise ExportError(f"no adapter could be exported from {store.root} ({reasons})")

    _write_launch_files(report, list(extra_args))
    return report


def _export_one(
    store: AdapterStore, expert: Expert, out: Path, hidden: int | None, report: ExportReport
) -> None:
    """Check and copy one expert's serving adapter into ``out/<expert>``; a failure lands in ``skipped``."""
    serving = store.serving(expert)
    if serving is None:
        report.skipped[expert.value] = "no serving version (train or promote one first)"
        return
    try:
        config, rank, warnings = check_adapter(serving.path, hidden)
    except ValueError as exc:
        report.skipped[expert.value] = f"{serving.version}: {exc}"
        return
    report.warnings += [f"{expert.value}: {w}" for w in warnings]
    tmp = out / f".tmp-{expert.value}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        config["base_model_name_or_path"] = report.base_model
        config["inference_mode"] = True
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
        shutil.copy2(serving.weights_path, tmp / WEIGHTS_FILE)
        _replace_dir(tmp, out / expert.value)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.exported[expert.value] = ExportedAdapter(
        expert=expert.value,
        version=serving.version,
        path=out / expert.value,
        rank=rank,
        target_modules=tuple(sorted(config.get("target_modules") or ())),
        sha256=sha256_file(out / expert.value / WEIGHTS_FILE),
    )


def _write_launch_files(report: ExportReport, extra_args: list[str]) -> None:
    """``launch.sh`` and ``manifest.json`` for the exported adapters; fills the report's command and rank."""
    out, base = report.out_dir, report.base_model
    report.max_lora_rank = vllm_rank(max(a.rank for a in report.exported.values()))
    modules = {name: name for name in report.exported}
    report.command = [
        "vllm", "serve", base, "--enable-lora",
        "--max-lora-rank", str(report.max_lora_rank),
        "--max-loras", str(len(modules)),
        "--lora-modules", *(f"{name}={out / name}" for name in modules),
        *extra_args,
    ]  # fmt: skip
    script = out / LAUNCH_FILE
    script.write_text(_launch_script(base, modules, report.max_lora_rank, extra_args), encoding="utf-8")
    script.chmod(0o755)
    report.launch_script = script
    manifest = {
        "base_model": base,
        "max_lora_rank": report.max_lora_rank,
        "adapters": {
            e: {
                "version": a.version,
                "rank": a.rank,
                "target_modules": list(a.target_modules),
                "sha256": a.sha256,
            }
            for e, a in report.exported.items()
        },
        "skipped": report.skipped,
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
