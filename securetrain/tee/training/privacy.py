"""DP-SGD inside the TEE with Opacus: the plan a job's privacy terms give, its refusals, and the private training.

When a training spec carries ``privacy``, each step clips every sample's gradient to ``max_grad_norm``, adds
Gaussian noise of ``noise_multiplier * max_grad_norm`` to their sum, and draws its batch by Poisson sampling
(each training row independently with the plan's sample rate), which is what the accountant's guarantee
assumes. The noise multiplier is the least that keeps the accountant's ε within the requested ε after the
job's epochs. What is chosen and why (determinism, the noise generator, what ε covers) is in docs/trainer.md
("Differential privacy").
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import rfc8785
import torch
from opacus import PrivacyEngine
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.utils.module_utils import trainable_modules
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from securetrain.core.contracts.job_spec import PrivacyRequest
from securetrain.core.contracts.training import JobKeys, PrivacySpent, PrivacyTermsRefused
from securetrain.tee.training.checkpoint import AccountantHistory, kek_derived_key
from securetrain.tee.training.data import TrainingData
from securetrain.tee.training.loop import Step, Trainee, Training, held_out_count, one_window
from securetrain.tee.training.models import ModelConfigurationError

log = logging.getLogger(__name__)

#: The term a plan whose noise multiplier is below the training spec's ``min_noise_multiplier`` breaks.
NOISE_FLOOR_TERM = "noise_multiplier_min"
_RANDOMNESS_INFO = b"securetrain dp-sgd randomness v1"


@dataclass(frozen=True)
class PrivacyPlan:
    """What DP-SGD under ``request`` does to a dataset: the noise, the sampling rate and the steps."""

    request: PrivacyRequest
    noise_multiplier: float
    sample_rate: float
    steps_per_epoch: int
    epochs: int

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def history_after(self, steps: int) -> AccountantHistory:
        """The accountant's history after ``steps`` steps of this plan."""
        return ((self.noise_multiplier, self.sample_rate, steps),) if steps else ()

    def report(self, history: AccountantHistory, epsilon: float) -> PrivacySpent:
        """The privacy record of ``history`` (steps of this plan) whose accountant computed ``epsilon``."""
        return PrivacySpent(
            epsilon=epsilon, delta=self.request.delta, accountant=self.request.accountant,
            noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
            steps=sum(steps for _, _, steps in history), max_grad_norm=self.request.max_grad_norm,
        )  # fmt: skip

    def spent(self, history: AccountantHistory) -> PrivacySpent:
        """The privacy spent by ``history`` (steps of this plan), as this plan's accountant computes it."""
        accountant = create_accountant(self.request.accountant)
        accountant.history = list(history)
        return self.report(history, accountant.get_epsilon(self.request.delta) if history else 0.0)

    @property
    def epsilon(self) -> float:
        """The ε the whole plan spends (at most the requested ε)."""
        return self.spent(self.history_after(self.steps)).epsilon


def plan_privacy(
    request: PrivacyRequest, rows: int, batch_size: int, epochs: int, min_noise_multiplier: float = 0.0
) -> PrivacyPlan:
    """The DP-SGD plan for a dataset of ``rows`` rows (before the held-out split), as training will run it.

    The TEE calls it once the data is opened, to know the ε a job would spend and its noise before it
    trains. The noise multiplier is Opacus' ``get_noise_multiplier`` for the sample rate and epochs, exactly
    as ``PrivacyEngine.make_private_with_epsilon`` computes it.

    Raises:
        PrivacyTermsRefused: no noise reaches the requested ε (term ``epsilon``), or the noise is below
            ``min_noise_multiplier`` (term ``noise_multiplier_min``).
    """
    training_rows = rows - held_out_count(rows)
    # Opacus samples each row with probability 1 / (batches of the non-private loader), for 1 / rate steps.
    sample_rate = 1 / math.ceil(training_rows / batch_size)
    steps_per_epoch = int(1 / sample_rate)
    try:
        noise_multiplier = get_noise_multiplier(
            target_epsilon=request.epsilon, target_delta=request.delta, sample_rate=sample_rate, epochs=epochs,
            accountant=request.accountant,
        )  # fmt: skip
    except ValueError as exc:  # Opacus: "The privacy budget is too low."
        raise PrivacyTermsRefused(
            "epsilon", f"no noise multiplier reaches epsilon {request.epsilon} at delta {request.delta} in "
            f"{epochs} epochs at sample rate {sample_rate:.6g} ({exc})"
        ) from None  # fmt: skip
    plan = PrivacyPlan(request, float(noise_multiplier), sample_rate, steps_per_epoch, epochs)
    if plan.noise_multiplier < min_noise_multiplier:
        raise PrivacyTermsRefused(
            NOISE_FLOOR_TERM, f"the plan's noise multiplier {plan.noise_multiplier:.6g} (epsilon {request.epsilon}, "
            f"{epochs} epochs at sample rate {sample_rate:.6g}) is below the floor {min_noise_multiplier}; "
            "ask for a smaller epsilon, fewer epochs or a smaller batch size"
        )  # fmt: skip
    return plan


def refuse_unsupported_layers(model: nn.Module, name: str) -> None:
    """Refuse a model Opacus cannot train privately (``ModuleValidator``), naming its layers; never fix it.

    Raises:
        ModelConfigurationError: a layer Opacus does not support (BatchNorm mixes samples of a batch, ...).
    """
    errors = ModuleValidator.validate(model)
    if not errors:
        return
    # ModuleValidator's errors do not say where the layer is: name each from the model's own layer names.
    named = [
        f"layer {layer_name!r} ({type(layer).__name__}): {error}"
        for layer_name, layer in trainable_modules(model)
        for error in ModuleValidator.VALIDATORS.get(type(layer), lambda _: [])(layer)
    ]
    raise ModelConfigurationError(
        f"model {name!r} cannot be trained with DP-SGD: {'; '.join(named or map(str, errors))}"
    )


class _TrainingRows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The training rows of the in-memory tensors; a Poisson-sampled batch is gathered in one indexing."""

    def __init__(self, data: TrainingData, train_rows: torch.Tensor) -> None:
        self._features, self._labels, self._rows = data.features, data.labels, train_rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self._rows[index]
        return self._features[row], self._labels[row]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self._rows[torch.as_tensor(indices, dtype=torch.long)]
        return self._features[rows], self._labels[rows]


def _gathered(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The collate function: ``_TrainingRows`` already returns the batch as two tensors (none if it is empty)."""
    return batch


class DpSgd:
    """DP-SGD for one run under its plan: Opacus' engine, the run's randomness, and what it spent.

    Sampling and noise come from two generators seeded at the start of every epoch from the run id, the
    job's seed and the epoch, through a key derived from the KEK: a run and a run resumed from any epoch draw
    the same batches and the same noise, and nobody without the KEK (the orchestrator included, which chose
    the seed) can predict either.
    """

    def __init__(self, plan: PrivacyPlan, keys: JobKeys, run_id: str, seed: int) -> None:
        self.plan = plan
        self._key = kek_derived_key(keys.kek_private, _RANDOMNESS_INFO)
        self._run_id, self._seed = run_id, seed
        with warnings.catch_warnings():
            # secure_mode is off by design (docs/trainer.md, "Differential privacy"); Opacus warns on every engine.
            warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
            self._engine = PrivacyEngine(accountant=plan.request.accountant, secure_mode=False)

    def _epoch_seed(self, stream: str, epoch: int) -> int:
        message = rfc8785.dumps({"run_id": self._run_id, "seed": self._seed, "epoch": epoch, "stream": stream})
        return int.from_bytes(hmac.new(self._key, message, hashlib.sha256).digest()[:8], "big")

    def training(
        self, trainee: Trainee, data: TrainingData, train_rows: torch.Tensor, batch_size: int, device: torch.device,
        resumed: AccountantHistory,
    ) -> Training:  # fmt: skip
        """Wrap ``trainee`` (restored from a checkpoint whose accountant history is ``resumed``) for DP-SGD.

        Opacus refuses a model it cannot train (:func:`refuse_unsupported_layers` says which layer, earlier).
        """
        sampling, noise = torch.Generator(), torch.Generator(device=device)
        loader = DataLoader(
            _TrainingRows(data, train_rows), batch_size=batch_size, generator=sampling, collate_fn=_gathered,
            num_workers=0, pin_memory=device.type == "cuda",
        )  # fmt: skip
        self._engine.accountant.history = list(resumed)
        module, optimizer, private_loader = self._engine.make_private(
            module=trainee.model, optimizer=trainee.optimizer, data_loader=loader,
            noise_multiplier=self.plan.noise_multiplier, max_grad_norm=self.plan.request.max_grad_norm,
            poisson_sampling=True, noise_generator=noise,
        )  # fmt: skip
        log.info("DP-SGD: noise multiplier %.4f, sample rate %.6g, %d steps per epoch, max grad norm %g, %s accountant",
                 self.plan.noise_multiplier, private_loader.sample_rate, len(private_loader),
                 self.plan.request.max_grad_norm, self.plan.request.accountant)  # fmt: skip

        def steps(epoch: int) -> Iterator[Step]:
            # Seeded here, at the start of the epoch, so that a resumed epoch replays its batches and noise.
            sampling.manual_seed(self._epoch_seed("sampling", epoch))
            noise.manual_seed(self._epoch_seed("noise", epoch))
            return (Step(x, y, len(y), len(y)) for x, y in private_loader)

        # No autocast: the guarantee rests on each row's gradient being clipped to max_grad_norm, and Opacus
        # computes those gradients and their norms from the activations its hooks keep: they stay float32, as on
        # the CPU, where this path is tested.
        return Training(module, optimizer, one_window(steps), len(train_rows), report_train_loss=False,
                        accountant=self.history, allows_autocast=False)  # fmt: skip

    def history(self) -> AccountantHistory:
        """The accountant's history so far: (noise multiplier, sample rate, steps) per phase."""
        return tuple((float(noise), float(rate), int(steps)) for noise, rate, steps in self._engine.accountant.history)

    def spent(self) -> PrivacySpent:
        """What the run spent, ε from the accountant's ``get_epsilon(delta)`` over the steps taken.

        Raises:
            PrivacyTermsRefused: the accountant says the run spent more than the requested ε (it then
                trained otherwise than planned); its model must not leave.
        """
        history = self.history()
        epsilon = self._engine.get_epsilon(self.plan.request.delta) if history else 0.0
        spent = self.plan.report(history, epsilon)
        if spent.epsilon > self.plan.request.epsilon:
            raise PrivacyTermsRefused("epsilon", f"the run spent epsilon {spent.epsilon:.6g}, more than the "
                                                 f"{self.plan.request.epsilon} requested; the model is not sealed")  # fmt: skip
        return spent
