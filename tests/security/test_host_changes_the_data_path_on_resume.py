"""The host changes the data path's settings between a crash and its resume: the run does not resume mid-epoch.

The data path's settings (``SECURETRAIN_DATA_WINDOW_SHARDS``, ``SECURETRAIN_DATA_LANES``) are the TEE's
environment, which its host sets and HOST_DATA does not measure (docs/trainer.md, "The data path"). They shape the
streamed row order, and a mid-epoch checkpoint records how many windows of that order were trained. Resumed
under other settings, those windows would be other rows: some trained twice, some never, and the model would no
longer be the one the seed and the recorded settings describe. The checkpoint records the settings it was cut
under (MAC-bound metadata); under other settings it is skipped, and the run resumes exactly from the newest
epoch's end. Played through run_training on the local stack's Azurite with the dataset of tests/streamed_shards.py.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import pytest

from securetrain.core.contracts.training import TrainingCancelled
from securetrain.tee.training import run_training
from tests.integration import test_training_run
from tests.integration.test_training_run import CancelAfterChecks, RecordingProgress
from tests.streamed_shards import LIMITS, sealed_shards, spec_for

pytestmark = pytest.mark.integration
# The fixtures of the training-path tests: the local stack's BlobStore, and a KEK made there as if released.
store, keys = test_training_run.store, test_training_run.keys


def test_a_mid_epoch_checkpoint_cut_in_other_lanes_is_skipped_for_the_newest_epochs_end(store, keys, caplog) -> None:
    spec = spec_for(sealed_shards(store, keys, "parquet"))
    # One cancel check after the survey, one before each step: a crash 2 steps into window 4 of epoch 2.
    with pytest.raises(TrainingCancelled, match="during epoch 2 at step 47"):
        run_training(spec, keys, store, RecordingProgress(), CancelAfterChecks(1 + 30 + 15 + 2), limits=LIMITS)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="securetrain.tee.training"):
        result = run_training(spec, keys, store, RecordingProgress(), threading.Event(),
                              limits=dataclasses.replace(LIMITS, lanes=2))  # fmt: skip
    assert "epoch-0001-window-000003.safetensors.sealed: it was cut within an epoch under SECURETRAIN_DATA_LANES 1 " \
           "(now 2)" in caplog.text  # fmt: skip
    assert f"from checkpoints/{spec.run_id}/epoch-0001.safetensors.sealed" in caplog.text
    assert result.epochs_completed == 2 and result.steps_completed == 2 * 6 * 5
