"""Sealed checkpoints after every epoch (and, when streaming, within one), resume from the newest one that verifies, and the sealed model.

A checkpoint is one safetensors file (no pickle, no ``torch.load``) sealed for the KEK's public key under
``{run_id, kind: "checkpoint", epoch, mac}``; the final model is sealed under ``{run_id, kind: "model"}``.
Their layout, and why ``mac`` (an HMAC keyed from the KEK's *private* key, so that a checkpoint anyone
sealed for the public key is not resumed from), are in docs/trainer.md ("Checkpoints and resume").
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import rfc8785
import safetensors
import safetensors.torch
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securetrain.core.errors import ConfigurationError, SecuretrainError, SecurityViolation
from securetrain.core.sealed import KekPrivateKey, SealedReader, seal
from securetrain.core.storage import BlobStore, StorageError
from securetrain.core.contracts.job_spec import BlobRef, CheckpointLocation
from securetrain.core.contracts.training import JobKeys

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "securetrain-checkpoint/1"
MODEL_FORMAT = "securetrain-model/1"
_MAC_INFO = b"securetrain checkpoint authentication v1"
#: A DP-SGD accountant's history: (noise multiplier, sample rate, steps) per phase, as Opacus keeps it.
AccountantHistory = tuple[tuple[float, float, int], ...]
# The safetensors header is at most 100 MB by its specification.
_MAX_SAFETENSORS_HEADER = 100_000_000


class CheckpointInvalid(SecurityViolation):
    """A checkpoint opened but is not one this run wrote: a bad MAC, a wrong run or epoch, a bad layout."""


@dataclass(frozen=True)
class Progress:
    """Where training stands after an epoch: epochs completed, optimizer steps taken, that epoch's metrics,
    and for DP-SGD the accountant's history (empty without differential privacy). Within an epoch (``windows`` >
    0) ``metrics`` holds the epoch's ``train_loss_sum`` so far."""

    epoch: int
    step: int
    metrics: Mapping[str, float]
    accountant: AccountantHistory = ()
    #: Windows of epoch ``epoch + 1`` done (a mid-epoch checkpoint of a streamed dataset); 0 at an epoch's end.
    windows: int = 0


@dataclass(frozen=True)
class WindowCut:
    """The data-path settings that make a streamed epoch's windows what they are: a mid-epoch checkpoint's window
    count is a position in that order only under the same ones."""

    window_shards: int
    lanes: int

    def metadata(self) -> dict[str, str]:
        return {"window_shards": str(self.window_shards), "lanes": str(self.lanes)}


class WindowCutChanged(ConfigurationError):
    """A mid-epoch checkpoint was cut under other data-path settings than this run streams with."""


_CUT_SETTINGS = {"window_shards": "SECURETRAIN_DATA_WINDOW_SHARDS", "lanes": "SECURETRAIN_DATA_LANES"}


def _check_cut(metadata: Mapping[str, str], cut: WindowCut | None) -> None:
    """Refuse a mid-epoch checkpoint whose windows are not this run's (or that does not say under which settings
    it was cut: resuming from it could skip rows or train some twice)."""
    expected = cut.metadata() if cut is not None else {}
    changed = [f"{setting} {metadata.get(name, 'unrecorded')} (now {expected.get(name, 'not streamed')})"
               for name, setting in _CUT_SETTINGS.items() if metadata.get(name) != expected.get(name)]  # fmt: skip
    if changed:
        raise WindowCutChanged(
            f"it was cut within an epoch under {' and '.join(changed)}: its windows are another order's; "
            "the run resumes from an epoch's end instead (restore the setting to resume from it)"
        )


def checkpoint_blob(location: CheckpointLocation, epoch: int, windows: int = 0) -> str:
    within = f"-window-{windows:06d}" if windows else ""
    return f"{location.prefix}epoch-{epoch:04d}{within}.safetensors.sealed"


def kek_derived_key(kek: KekPrivateKey, info: bytes) -> bytes:
    """A 32-byte key for purpose ``info``, derived by HKDF from the KEK's private key: only a TEE that was
    released the KEK (and the data owner) can compute it."""
    private_exponent = kek.private_key.private_numbers().d
    secret = private_exponent.to_bytes((private_exponent.bit_length() + 7) // 8, "big")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _mac(kek: KekPrivateKey, run_id: str, epoch: int, payload: bytes, windows: int = 0) -> str:
    fields: dict[str, Any] = {"run_id": run_id, "epoch": epoch, "sha256": hashlib.sha256(payload).hexdigest()}
    if windows:  # an end-of-epoch checkpoint's MAC is what it was before mid-epoch checkpoints existed
        fields["windows"] = windows
    message = rfc8785.dumps(fields)
    return hmac.new(kek_derived_key(kek, _MAC_INFO), message, hashlib.sha256).hexdigest()


def safetensors_metadata(payload: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (``safetensors.torch.load`` returns only the tensors)."""
    if len(payload) < 8:
        raise CheckpointInvalid("the safetensors file is shorter than its 8-byte header length")
    (length,) = struct.unpack("<Q", payload[:8])
    if length > min(_MAX_SAFETENSORS_HEADER, len(payload) - 8):
        raise CheckpointInvalid(f"the safetensors header length {length} exceeds the file")
    try:
        metadata = json.loads(payload[8 : 8 + length]).get("__metadata__", {})
    except (ValueError, AttributeError) as exc:
        raise CheckpointInvalid(f"the safetensors header is not a JSON object: {exc}") from None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointInvalid("the safetensors metadata is not a map of strings")
    return metadata


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer's state dict split into named tensors and a JSON description of everything else."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                values.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "values": values}


def encode_checkpoint(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, progress: Progress, run_id: str, cut: WindowCut | None = None
) -> bytes:
    """The checkpoint as safetensors bytes (see the module documentation for the layout); a mid-epoch one records
    ``cut``, the settings its windows count under (in the payload, so under its MAC)."""
    tensors = {f"model.{name}": value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    optimizer_tensors, optimizer_json = _optimizer_tensors(optimizer)
    tensors |= optimizer_tensors
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for device, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{device}"] = state
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "run_id": run_id,
        "epoch": str(progress.epoch),
        "step": str(progress.step),
        "metrics": json.dumps(dict(progress.metrics)),
        "optimizer": json.dumps(optimizer_json),
    }
    if progress.accountant:
        metadata["accountant"] = json.dumps([list(phase) for phase in progress.accountant])
    if progress.windows:
        metadata["windows"] = str(progress.windows)
        if cut is not None:
            metadata |= cut.metadata()
    return safetensors.torch.save(tensors, metadata=metadata)


def _accountant_history(metadata: Mapping[str, str]) -> AccountantHistory:
    if "accountant" not in metadata:
        return ()
    phases = json.loads(metadata["accountant"])
    return tuple((float(noise), float(rate), int(steps)) for noise, rate, steps in phases)


def restore_checkpoint(
    payload: bytes, model: torch.nn.Module, optimizer: torch.optim.Optimizer, run_id: str, epoch: int,
    accountant_after: Callable[[int], AccountantHistory] | None = None, windows: int = 0, cut: WindowCut | None = None,
) -> Progress:  # fmt: skip
    """Load a checkpoint's state into ``model``, ``optimizer`` and the RNGs; :class:`CheckpointInvalid` if unusable,
    :class:`WindowCutChanged` if it is ``windows`` into an epoch cut under other settings than ``cut``.

    ``accountant_after(step)`` is the DP-SGD accountant history this job has after ``step`` steps (None
    without differential privacy: then the checkpoint must carry none). Everything is checked before
    anything is loaded, so a refused checkpoint leaves the model untouched.
    """
    metadata = safetensors_metadata(payload)
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointInvalid(f"format is {metadata.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    if metadata.get("run_id") != run_id or metadata.get("epoch") != str(epoch) or metadata.get("windows", "0") != str(windows):
        def position(at: object, within: object) -> str:
            return f"epoch {at}" + (f" + {within} windows" if within not in (0, "0") else "")

        raise CheckpointInvalid(
            f"it is {position(metadata.get('epoch'), metadata.get('windows', '0'))} of run {metadata.get('run_id')!r}, "
            f"expected {position(epoch, windows)} of {run_id!r}"
        )
    if windows:
        _check_cut(metadata, cut)
    try:
        tensors = safetensors.torch.load(payload)
        step = int(metadata["step"])
        metrics = {str(k): float(v) for k, v in json.loads(metadata["metrics"]).items()}
        optimizer_json = json.loads(metadata["optimizer"])
        accountant = _accountant_history(metadata)
    except (safetensors.SafetensorError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointInvalid(f"its content does not parse: {exc}") from None
    expected_accountant = accountant_after(step) if accountant_after is not None else ()
    if accountant != expected_accountant:
        # The spent privacy is computed from this history: it must be what this job's plan spends in these steps.
        raise CheckpointInvalid(f"its DP-SGD accountant history {list(accountant)} is not this job's "
                                f"{list(expected_accountant)} after step {step}")  # fmt: skip

    model_state = {name[len("model.") :]: value for name, value in tensors.items() if name.startswith("model.")}
    optimizer_state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            optimizer_state.setdefault(int(index), {})[key] = value
    for index, values in optimizer_json["values"].items():
        optimizer_state.setdefault(int(index), {}).update(values)
    current_groups = optimizer.state_dict()["param_groups"]
    if len(current_groups) != len(optimizer_json["param_groups"]):
        raise CheckpointInvalid("its optimizer has another number of parameter groups")
    # JSON turned tuples (Adam's betas) into lists; give them back the types the optimizer uses.
    groups = [
        {key: tuple(value) if isinstance(current.get(key), tuple) else value for key, value in saved.items()}
        for current, saved in zip(current_groups, optimizer_json["param_groups"], strict=True)
    ]
    expected = model.state_dict()
    if set(model_state) != set(expected) or any(model_state[k].shape != expected[k].shape for k in expected):
        raise CheckpointInvalid("its model tensors do not match the model this job builds")
    if "rng.torch" not in tensors:
        raise CheckpointInvalid("it has no RNG state")
    try:
        optimizer.load_state_dict({"state": optimizer_state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointInvalid(f"its optimizer state does not load: {exc}") from None
    model.load_state_dict(model_state)
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
    if cuda_states and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    elif any(name.startswith("rng.cuda.") for name in tensors):
        log.warning("the checkpoint has CUDA RNG state for other devices; the resumed run is not bit-exact")
    return Progress(epoch, step, metrics, accountant, windows)


def _sealed(payload: bytes, keys: JobKeys, context: Mapping[str, str]) -> io.BytesIO:
    sealed = io.BytesIO()
    seal(io.BytesIO(payload), sealed, keys.kek_public, context)
    sealed.seek(0)
    return sealed


class Checkpoints:
    """The sealed checkpoints of one run under its checkpoint location."""

    _NAME = re.compile(r"epoch-(\d{4,})(?:-window-(\d{6,}))?\.safetensors\.sealed")

    def __init__(self, store: BlobStore, location: CheckpointLocation, run_id: str, keys: JobKeys,
                 cut: WindowCut | None = None) -> None:  # fmt: skip
        """``cut``: the settings a streamed run's windows count under (None in memory)."""
        self._store = store
        self._location = location
        self._run_id = run_id
        self._keys = keys
        self._cut = cut

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, progress: Progress) -> str:
        """Seal and upload the checkpoint of ``progress`` (an epoch's end, or windows within the next); return its
        blob name."""
        payload = encode_checkpoint(model, optimizer, progress, self._run_id, self._cut)
        context = {
            "run_id": self._run_id,
            "kind": "checkpoint",
            "epoch": str(progress.epoch),
            **({"windows": str(progress.windows)} if progress.windows else {}),
            "mac": _mac(self._keys.kek_private, self._run_id, progress.epoch, payload, progress.windows),
        }
        blob = checkpoint_blob(self._location, progress.epoch, progress.windows)
        sealed = _sealed(payload, self._keys, context)
        # A resumed run may redo an epoch whose checkpoint did not verify: replacing it is intended.
        self._store.upload_stream(
            self._location.container, blob, sealed, length=len(sealed.getbuffer()), overwrite=True
        )
        log.info("sealed checkpoint of epoch %d%s (step %d) to %s/%s", progress.epoch,
                 f" + {progress.windows} windows" if progress.windows else "", progress.step,
                 self._location.container, blob)  # fmt: skip
        return blob

    def _epochs(self, max_epoch: int, mid_epoch: bool) -> list[tuple[int, int, str]]:
        """(epoch, windows, blob) of each checkpoint (mid-epoch ones only if ``mid_epoch``), newest first."""
        found = []
        for info in self._store.list_blobs(self._location.container, self._location.prefix):
            match = self._NAME.fullmatch(info.name[len(self._location.prefix) :])
            if match is None:
                continue
            epoch, windows = int(match.group(1)), int(match.group(2) or 0)
            if windows and not mid_epoch:
                continue
            if (1 <= epoch <= max_epoch) if windows == 0 else (0 <= epoch < max_epoch):
                found.append((epoch, windows, info.name))
            else:
                log.warning("ignoring checkpoint %s: epoch %d is outside this job's 1..%d", info.name, epoch, max_epoch)
        return sorted(found, reverse=True)

    def _open(self, blob: str, epoch: int, windows: int) -> bytes:
        expected = {"run_id": self._run_id, "kind": "checkpoint", "epoch": str(epoch),
                    **({"windows": str(windows)} if windows else {})}  # fmt: skip
        with self._store.open_read(self._location.container, blob) as src:
            reader = SealedReader(src, self._keys.kek_private, expected_context=expected)
            payload = bytes(reader.read_plaintext())
        mac = reader.header.content.context.get("mac", "")
        if not hmac.compare_digest(mac, _mac(self._keys.kek_private, self._run_id, epoch, payload, windows)):
            raise CheckpointInvalid("its MAC does not verify: it was not written by a TEE holding this run's KEK")
        return payload

    def restore_latest(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_epoch: int,
        accountant_after: Callable[[int], AccountantHistory] | None = None, mid_epoch: bool = False,
    ) -> tuple[Progress, str] | None:  # fmt: skip
        """Load the newest checkpoint that opens and verifies; None if there is none.

        ``accountant_after`` is as for :func:`restore_checkpoint`. ``mid_epoch``: whether checkpoints within an
        epoch count (a streamed dataset's; training in memory cannot start in the middle of an epoch).

        A checkpoint that fails (seal, MAC, content) is skipped with a warning and the next older one
        tried. Storage failures are raised: starting over because storage did not answer would discard
        the run's progress and overwrite its checkpoints.
        """
        for epoch, windows, blob in self._epochs(max_epoch, mid_epoch):
            try:
                payload = self._open(blob, epoch, windows)
                progress = restore_checkpoint(payload, model, optimizer, self._run_id, epoch, accountant_after, windows,
                                              self._cut)  # fmt: skip
            except StorageError:
                raise
            except WindowCutChanged as exc:
                log.warning("skipping checkpoint %s/%s: %s", self._location.container, blob, exc)
                continue
            except SecuretrainError as exc:
                log.warning("skipping checkpoint %s/%s, it does not verify: %s", self._location.container, blob, exc)
                continue
            log.info("resuming run %s from %s/%s (epoch %d, step %d)", self._run_id, self._location.container, blob,
                     progress.epoch, progress.step)  # fmt: skip
            return progress, blob
        return None


def seal_model(
    store: BlobStore, output: BlobRef, run_id: str, keys: JobKeys, model: torch.nn.Module, description: Mapping[str, Any],
    *, contract: str | None = None,
) -> None:
    """Seal the model's weights (safetensors, ``description`` as JSON metadata) and upload them to ``output``; the
    seal context names the ``contract`` the job ran under, if any (an export is held to it)."""
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    payload = safetensors.torch.save(
        tensors, metadata={"format": MODEL_FORMAT, "run_id": run_id, "description": json.dumps(dict(description))}
    )
    context = {"run_id": run_id, "kind": "model", **({"contract": contract} if contract is not None else {})}
    sealed = _sealed(payload, keys, context)
    # A run resumed after a crash while sealing writes the same model again.
    store.upload_stream(output.container, output.blob, sealed, length=len(sealed.getbuffer()), overwrite=True)
    log.info("sealed the model of run %s to %s/%s", run_id, output.container, output.blob)
