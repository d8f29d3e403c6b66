"""The command lines refuse bad options and bad states by name, before anything loads or is lost:
numeric options out of range, another stage's checkpoint, a disk that fills up mid-checkpoint."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfyui_independent  # argument parsing and checkpoint folders: no ComfyUI code

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from elite_eval.run import build_parser  # noqa: E402
from elite_training import catversion as catversion_cli  # noqa: E402
from elite_training import elite as elite_cli  # noqa: E402
from elite_training.data.objects import DataError  # noqa: E402
from elite_training.elite_checkpoints import find_resume, load_checkpoint, save_checkpoint  # noqa: E402
from elite_training.prepare_data import main as prepare  # noqa: E402

ELITE = ["--pretrained", "sd", "--image-encoder", "clip", "--data", "d", "--output-dir", "o"]
CATVERSION = ["--checkpoint", "c.safetensors", "--images", "photos"]
EVAL = ["benchmark", "--out", "run"]

BAD_OPTIONS = [  # (parser, required arguments, option, bad value, words of the message)
    (elite_cli.parse_args, ELITE, "--batch-size", "0", "at least 1"),
    (elite_cli.parse_args, ELITE, "--steps", "-5", "at least 1"),
    (elite_cli.parse_args, ELITE, "--gradient-accumulation", "two", "not a whole number"),
    (elite_cli.parse_args, ELITE, "--learning-rate", "0", "above 0"),
    (elite_cli.parse_args, ELITE, "--learning-rate", "nan", "finite number"),
    (elite_cli.parse_args, ELITE, "--max-grad-norm", "-1", "at least 0"),
    (elite_cli.parse_args, ELITE, "--resolution", "500", "multiple of 64"),
    (elite_cli.parse_args, ELITE, "--checkpoint-every", "-1", "at least 0"),
    (elite_cli.parse_args, ELITE, "--validation-images", "-1", "at least 0"),
    (elite_cli.parse_args, ELITE, "--identity-max-timestep", "1000", "from 0 to 999"),
    (elite_cli.parse_args, ELITE, "--identity-weight", "inf", "finite number"),
    (elite_cli.parse_args, ELITE, "--seed", str(2**64), "from 0 to"),
    (catversion_cli.parse_args, CATVERSION, "--batch-size", "0", "at least 1"),
    (catversion_cli.parse_args, CATVERSION, "--steps", "0", "at least 1"),
    (catversion_cli.parse_args, CATVERSION, "--resolution", "100", "multiple of 64"),
    (catversion_cli.parse_args, CATVERSION, "--learning-rate", "-0.1", "above 0"),
    (catversion_cli.parse_args, CATVERSION, "--seed", "-1", "from 0 to"),
    (build_parser().parse_args, EVAL, "--size", "0", "at least 64"),
    (build_parser().parse_args, EVAL, "--seeds", "x", "not a whole number"),
    (build_parser().parse_args, EVAL, "--cfg", "1e9", "at most 100"),
    (build_parser().parse_args, EVAL, "--prompts", "0", "at least 1"),
]


@pytest.mark.parametrize("parse, required, option, value, words", BAD_OPTIONS,
                         ids=[f"{case[0].__module__.split('.')[-1]}{case[2]}={case[3]}" for case in BAD_OPTIONS])
def test_numeric_options_are_refused_by_name_before_anything_loads(parse, required, option, value, words, capsys):
    with pytest.raises(SystemExit) as stop:
        parse([*required, option, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and words in err and "Traceback" not in err


def test_good_numbers_pass_unchanged():
    args = elite_cli.parse_args([*ELITE, "--batch-size", "3", "--learning-rate", "2e-6", "--resolution", "256",
                                 "--seed", str(2**63 - 1), "--max-grad-norm", "0"])
    assert (args.batch_size, args.learning_rate, args.resolution, args.seed) == (3, 2e-6, 256, 2**63 - 1)
    assert args.max_grad_norm == 0.0  # 0 turns gradient clipping off


def test_prepare_data_refuses_a_zero_shard_size(capsys):
    with pytest.raises(SystemExit):
        prepare(["shards", "data", "out", "--stage", "global", "--samples-per-shard", "0"])
    assert "argument --samples-per-shard" in capsys.readouterr().err


class FakeAccelerator:
    """What the checkpoint helpers use of accelerate's Accelerator, one process."""

    is_main_process = True

    def __init__(self, fail_after_files: int | None = None, load_error: str | None = None):
        self.fail_after_files, self.load_error, self.loaded = fail_after_files, load_error, None

    def save_state(self, folder: str) -> None:
        Path(folder).mkdir(parents=True)
        for i in range(3):
            if self.fail_after_files is not None and i == self.fail_after_files:
                raise OSError(errno.ENOSPC, "No space left on device")
            (Path(folder) / f"part{i}.bin").write_bytes(b"x" * 10)

    def load_state(self, folder: str) -> None:
        if self.load_error:
            raise RuntimeError(self.load_error)
        self.loaded = folder

    def wait_for_everyone(self) -> None:
        pass


def test_a_checkpoint_cut_by_a_full_disk_leaves_nothing_and_the_last_one_stays(tmp_path):
    save_checkpoint(FakeAccelerator(), str(tmp_path / "checkpoint-2"), 2, "global")
    with pytest.raises(OSError) as full:
        save_checkpoint(FakeAccelerator(fail_after_files=1), str(tmp_path / "checkpoint-4"), 4, "global")
    assert full.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    found, step = find_resume(type("Config", (), {"resume": "latest", "output_dir": str(tmp_path)})())
    assert (Path(found).name, step) == ("checkpoint-2", 2)


def test_resuming_the_other_stages_checkpoint_is_refused_by_name(tmp_path):
    save_checkpoint(FakeAccelerator(), str(tmp_path / "checkpoint-2"), 2, "global")
    with pytest.raises(DataError, match="checkpoint of the global stage, and this run trains the local stage"):
        load_checkpoint(FakeAccelerator(), str(tmp_path / "checkpoint-2"), "local")
    accelerator = FakeAccelerator()
    load_checkpoint(accelerator, str(tmp_path / "checkpoint-2"), "global")
    assert accelerator.loaded == str(tmp_path / "checkpoint-2")


def test_a_checkpoint_without_its_stage_that_does_not_fit_is_named(tmp_path):
    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    (folder / "elite_step.json").write_text(json.dumps({"step": 2}))  # written before the stage was recorded
    mismatch = "Error(s) in loading state_dict for LocalStage:\n\tMissing key(s) in state_dict: ..."
    with pytest.raises(DataError, match="does not fit this run") as refused:
        load_checkpoint(FakeAccelerator(load_error=mismatch), str(folder), "local")
    assert "Missing key" not in str(refused.value)


def test_the_disk_full_message_names_the_folder_and_the_way_on():
    from elite_core.common.files import disk_full

    message = disk_full(OSError(errno.ENOSPC, "No space left on device"), "/runs/elite")
    assert "/runs/elite" in message and "full" in message and "Free some space" in message
    assert disk_full(OSError(errno.EACCES, "Permission denied"), "/runs/elite") is None
