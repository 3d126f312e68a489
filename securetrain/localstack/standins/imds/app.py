"""The IMDS stand-in's HTTP face: the two reads a confidential VM's guest makes of Azure's IMDS.

    GET /metadata/THIM/amd/certification                                         header Metadata: true
        200 {"vcekCert": PEM, "tcbm": TCB in hex, "certificateChain": PEM of ASK then ARK}
    GET /metadata/instance/compute/storageProfile/imageReference?api-version=V   header Metadata: true
        200 {"id", "offer", "publisher", "sku", "version", "communityGalleryImageId", "sharedGalleryImageId",
             "exactVersion"}
    400 {"error": ...}   without ``Metadata: true`` (IMDS's guard against requests that did not mean to reach it),
                         or an instance path without ``api-version``

THIM (Trusted Hardware Identity Management) is Azure's cache of AMD's certificates: it answers with the VCEK of
the host's chip at the chip's current TCB (``tcbm``: that TCB_VERSION as a 64-bit little-endian number, in hex,
as microsoft/confidential-sidecar-containers reads it), and AMD's ASK and ARK. Here the chip is the simulated
SEV-SNP platform (:mod:`securetrain.localstack.platform.snp_platform`) at the TCB its reports carry. THIM also
sends a ``cacheControl`` field whose value is not documented; the stand-in leaves it out.

How the stand-in differs from Azure: IMDS is plain HTTP at the link-local address 169.254.169.254, which the
host answers for its own VM only; the stand-in, like every stand-in, speaks HTTPS on loopback with a certificate
of the stack's CA. It serves these two reads, not the rest of IMDS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from securetrain.localstack.platform.snp_platform import DEFAULT_TCB, SimulatedSnpPlatform
from securetrain.tee.evidence.azure_cvm import IMAGE_REFERENCE_PATH, THIM_PATH

#: The image the local CVM runs, in IMDS's image-reference shape.
LOCAL_IMAGE_REFERENCE = {
    "id": "", "offer": "securetrain-local-cvm", "publisher": "securetrain", "sku": "simulated", "version": "1",
    "communityGalleryImageId": "", "sharedGalleryImageId": "", "exactVersion": "1",
}  # fmt: skip


@dataclass(frozen=True)
class ImdsConfig:
    """The simulated SEV-SNP platform whose certificates THIM serves, and the image the VM runs."""

    snp_platform_dir: Path
    image_reference: Mapping[str, str] = field(default_factory=lambda: dict(LOCAL_IMAGE_REFERENCE))


def _metadata_request(metadata: Annotated[str | None, Header(alias="Metadata")] = None) -> None:
    if metadata != "true":
        raise HTTPException(400, "Bad request. Required metadata header not specified")


def create_app(config: ImdsConfig) -> FastAPI:
    platform = SimulatedSnpPlatform.load_or_create(config.snp_platform_dir)
    app = FastAPI(title="securetrain IMDS stand-in", docs_url=None, redoc_url=None,
                  dependencies=[Depends(_metadata_request)])  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    def refused(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content={"error": exc.detail})

    @app.exception_handler(RequestValidationError)
    def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        missing = ", ".join(str(error["loc"][-1]) for error in exc.errors())
        return JSONResponse(status_code=400, content={"error": f"Bad request. {missing} was not specified in the request"})

    @app.get(THIM_PATH)
    def amd_certification() -> dict[str, str]:
        chain = platform.certificate_chain(DEFAULT_TCB)
        return {
            "vcekCert": chain.vcek.to_pem().decode(),
            "tcbm": f"{int.from_bytes(DEFAULT_TCB.to_bytes(), 'little'):016X}",
            "certificateChain": (chain.ask.to_pem() + chain.ark.to_pem()).decode(),
        }

    @app.get(IMAGE_REFERENCE_PATH)
    def image_reference(api_version: Annotated[str, Query(alias="api-version", min_length=1)]) -> Mapping[str, str]:
        # IMDS requires the api-version on instance paths; every version answers this read the same.
        return config.image_reference

    return app
