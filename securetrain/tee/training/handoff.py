"""What the launcher hands each worker over its inherited pipe: the job's released keys, its training spec and,
for a streamed dataset, the launcher's survey of it.

The keys travel as raw PKCS#8 DER after the frame's JSON, only through the pipe: never in a file, an
environment variable or a command line, where other processes or a crash dump would find them. The survey
follows in a frame of its own (:mod:`~securetrain.tee.training.survey`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

from cryptography.hazmat.primitives import serialization

from securetrain.core.contracts.training import JobKeys, TrainingSpec
from securetrain.core.sealed import KekPrivateKey
from securetrain.tee.training.data import DataLimits
from securetrain.tee.training.frames import BrokenFrame, read_frame, write_frame
from securetrain.tee.training.survey import Survey, survey_frame, survey_of_frame


@dataclass(frozen=True, repr=False)
class Assignment:
    """One worker's part of a job: its rank in a group of ``world_size`` meeting on loopback ``port``."""

    spec: TrainingSpec
    keys: JobKeys
    #: The sealed header of each shard as the agent witnessed it; every worker must read the same files.
    headers: tuple[bytes, ...]
    rank: int
    world_size: int
    port: int
    timeout_s: int
    threads: int
    limits: DataLimits
    #: The launcher's survey of a streamed dataset (None in memory: each worker loads the dataset).
    survey: Survey | None = None


def _der(key: KekPrivateKey) -> bytes:
    return key.private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key(der: bytes) -> KekPrivateKey:
    return KekPrivateKey(serialization.load_der_private_key(der, password=None))  # type: ignore[arg-type]


def send_assignment(out: BinaryIO, assignment: Assignment) -> None:
    keys = [(None, _der(assignment.keys.kek_private))]
    keys += [(kek_id, _der(key)) for kek_id, key in assignment.keys.dataset_keks.items()]
    message: dict[str, Any] = {
        "spec": assignment.spec.model_dump(mode="json"),
        "kek_id": assignment.keys.kek_public.kek_id,
        "keys": [{"kek_id": kek_id, "length": len(der)} for kek_id, der in keys],
        "headers": [header.hex() for header in assignment.headers],
        "rank": assignment.rank, "world_size": assignment.world_size, "port": assignment.port,
        "timeout_s": assignment.timeout_s, "threads": assignment.threads,
        "limits": asdict(assignment.limits), "surveyed": assignment.survey is not None,
    }  # fmt: skip
    write_frame(out, message, b"".join(der for _, der in keys))
    if assignment.survey is not None:
        write_frame(out, *survey_frame(assignment.survey))


def receive_assignment(src: BinaryIO) -> Assignment:
    """The assignment the launcher wrote; :class:`BrokenFrame` if the pipe does not carry one."""
    frame = read_frame(src)
    if frame is None:
        raise BrokenFrame("the launcher closed the pipe before handing over the job")
    message, data = frame
    try:
        offset, released = 0, []
        for entry in message["keys"]:
            released.append((entry["kek_id"], _key(data[offset : offset + entry["length"]])))
            offset += entry["length"]
        (_, kek_private), others = released[0], dict(released[1:])
        spec = TrainingSpec.model_validate(message["spec"])
        surveyed = message["surveyed"]
        if not isinstance(surveyed, bool):
            raise TypeError(f"'surveyed' is {surveyed!r}, not a boolean")
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise BrokenFrame(f"the job handed over is malformed: {exc!r}") from None
    survey = None
    if surveyed:
        frame = read_frame(src)
        if frame is None:
            raise BrokenFrame("the launcher closed the pipe before handing over its survey of the data")
        survey = survey_of_frame(*frame, spec)
    try:
        return Assignment(
            spec=spec,
            keys=JobKeys.from_released(kek_private, message["kek_id"], others),
            headers=tuple(bytes.fromhex(header) for header in message["headers"]),
            rank=message["rank"], world_size=message["world_size"], port=message["port"],
            timeout_s=message["timeout_s"], threads=message["threads"], limits=DataLimits(**message["limits"]),
            survey=survey,
        )  # fmt: skip
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise BrokenFrame(f"the job handed over is malformed: {exc!r}") from None
