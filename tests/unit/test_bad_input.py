"""Every bad input of the fault-tolerance issue fails fast: one `codistill: error:` line, exit code 2.

Checks that happen before any process group run in this process through `codistill.train` (its composition
preflight and `run`); the one world-size mismatch needs a real torchrun launch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codistill import train
from codistill.config import ConfigError, register_configs
from codistill.distributed.topology import resolve_layout
from tests.helpers import ANY_MODEL, REPO, make_config, run_torchrun

SHORT = ["trainer.max_steps=10", "distill.burn_in_steps=2", "logger.plots=false"]


def first_run(tmp_path: Path) -> Path:
    """A finished 2-group run with a checkpoint to resume from."""
    run_dir = tmp_path / "first"
    train.run(make_config(["topology.mode=simulated", *SHORT]), run_dir)
    return run_dir


def corrupt(tmp_path: Path) -> list[str]:
    run_dir = first_run(tmp_path)
    (data,) = (run_dir / "checkpoints").glob("step*/group0.pt")
    data.write_bytes(data.read_bytes()[:-10])
    return [f"trainer.resume={run_dir}"]


def other_topology(tmp_path: Path) -> list[str]:
    return [f"trainer.resume={first_run(tmp_path)}", "topology.replicas=2"]


def unwritable_exchange(tmp_path: Path) -> list[str]:
    (tmp_path / "file").write_text("")
    return ["distill.exchange=filesystem", f"distill.exchange_dir={tmp_path / 'file' / 'exchange'}"]


def unwritable_output(tmp_path: Path) -> list[str]:
    (tmp_path / "run").write_text("")  # the run directory's path is taken by a file
    return []


def shared_exchange(tmp_path: Path) -> list[str]:
    from codistill.distributed.exchange.filesystem import claim

    claim(tmp_path / "ex", "another-run-0123456789ab")
    return ["distill.exchange=filesystem", f"distill.exchange_dir={tmp_path / 'ex'}"]


USER_DATA = [f"hydra.searchpath=[file://{REPO}/tests/conf]", "data=blobs", "data.eval_examples=0"]


def user_model(name: str) -> list[str]:
    return [*USER_DATA, "model=dict_net", f"model._target_=tests.user_components.{name}", "~model.width",
            "~model.dropout"]


# case -> (overrides or a function of tmp_path giving them, text the message must contain)
CASES = {
    "groups_below_1": (["topology.groups=0"], "topology.groups=0 must be >= 1"),
    "temperature_0": (["distill.temperature=0"], "distill.temperature=0"),
    "alpha_negative": (["distill.alpha=-1"], "distill.alpha=-1"),
    "exchange_every_0": (["distill.exchange_every=0"], "distill.exchange_every=0"),
    "burn_in_negative": (["distill.burn_in_steps=-1"], "distill.burn_in_steps=-1"),
    "burn_in_whole_run": (["distill.burn_in_steps=10", "trainer.max_steps=10"], "would never distill"),
    "unknown_model": (["model=resnet"], "resnet"),
    "unknown_data": (["data=imagenet"], "imagenet"),
    # a user's components (tests/user_components.py), by import path
    "model_path_does_not_resolve": (["model._target_=nowhere.nets.Net"], "model._target_=nowhere.nets.Net does not resolve"),
    "model_rejects_its_arguments": (["+model.widths=[3]"], "codistill.components.models.MLP rejects its arguments"),
    "data_path_does_not_resolve": (["data.train._target_=tests.user_components.Nope"], "data.train._target_="),
    "samples_not_pairs": (USER_DATA + ["data.train._target_=tests.user_components.Triples"],
                          "samples must be (input, target) pairs"),
    "label_outside_classes": (USER_DATA + ["+data.train.bad_label_every=7"], "has label 12, outside [0, 4)"),
    "held_out_label_outside_classes": (USER_DATA + ["+data.eval.bad_label_every=101"], "data.eval has label 12, outside [0, 4)"),
    "eval_examples_below_replicas": (["topology.replicas=2", "data.eval_examples=1"],
                                     "scores 1 example(s), fewer than the 2 replicas"),
    "label_outside_classes_in_a_loader_worker": (USER_DATA + ["+data.train.bad_label_every=7", "data.num_workers=2"],
                                                 "has label 12, outside [0, 4)"),
    "model_output_without_logits": (user_model("WordNet"), "the model returned a str"),
    "model_output_of_the_wrong_shape": (user_model("FlatNet"), "returned logits of shape (8,) for labels of shape (2,)"),
    "precision_unknown": (["trainer.precision=fp8"], "trainer.precision='fp8' is not one of fp32, bf16, fp16"),
    "fp16_on_cpu": (["trainer.precision=fp16", "topology.device=cpu"], "trainer.precision=fp16 needs a CUDA device"),
    "grad_accum_0": (["trainer.grad_accum=0"], "trainer.grad_accum=0 must be >= 1"),
    "grad_accum_not_dividing": (["trainer.grad_accum=3"], "not divisible by 1 replicas x trainer.grad_accum=3"),
    "grad_clip_0": (["optim.grad_clip=0"], "optim.grad_clip=0.0 must be > 0"),
    "teacher_dtype_unknown": (["distill.teacher_dtype=int8"], "distill.teacher_dtype='int8'"),
    "label_noise_out_of_range": (["data.label_noise=1.5"], "data.label_noise=1.5 must be in [0, 1)"),
    "train_examples_too_many": (["data.train_examples=100000"], "data.train_examples=100000 is larger than the training set"),
    "unknown_mode": (["distill.mode=magic"], "distill.mode='magic'"),
    "diloco_outer_lr_0": (["distill=diloco", "distill.outer_optim.lr=0"], "distill.outer_optim.lr=0.0 must be > 0"),
    "diloco_outer_momentum_1": (["distill=diloco", "distill.outer_optim.momentum=1"],
                                "distill.outer_optim.momentum=1.0 must be in [0, 1)"),
    "diloco_outer_momentum_negative": (["distill=diloco", "distill.outer_optim.momentum=-0.1"],
                                       "distill.outer_optim.momentum=-0.1 must be in [0, 1)"),
    "diloco_filesystem_exchange": (["distill=diloco", "distill.exchange=filesystem"],
                                   "distill.mode=diloco needs every group at every outer step: use distill.exchange=collective"),
    "outer_dtype_unknown": (["distill=diloco", "distill.outer_dtype=float16"], "distill.outer_dtype='float16'"),
    "key_typo": (["trainer.max_stepz=5"], "max_stepz"),
    "data_missing": (["data=fashion_mnist", "data.train.root=/nonexistent"], "/nonexistent"),
    "batch_not_divisible": (["topology.replicas=3"], "not divisible by the 3 replicas"),
    "group_id_needs_filesystem": (["topology.group_id=1"], "distill.exchange=filesystem"),
    "group_id_out_of_range": (["topology.group_id=2"], "topology.group_id=2 must be in [0"),
    "resume_missing": (["trainer.resume=/nonexistent/run"], "no complete checkpoint there"),
    "resume_corrupt": (corrupt, "does not match its checksum"),
    "resume_other_topology": (other_topology, "resume with the same topology"),
    "exchange_dir_unwritable": (unwritable_exchange, "is not usable"),
    "output_dir_unwritable": (unwritable_output, "output directory (hydra.run.dir)="),
    "exchange_dir_of_another_run": (shared_exchange, "belongs to run 'another-run-0123456789ab'"),
    "preempt_signal_unknown": (["trainer.preempt_signals=[SIGTERM,SIGFOO]"], "trainer.preempt_signals: 'SIGFOO'"),
    "preempt_signal_uncatchable": (["trainer.preempt_signals=[SIGKILL]"], "not a signal a process can catch"),
    "stop_check_every_0": (["trainer.stop_check_every=0"], "trainer.stop_check_every=0 must be >= 1"),
    "nan_loss": (["optim.lr=1e6", "trainer.checkpoint_every=1", "trainer.log_every=1"], "is not finite"),
    "nan_loss_while_distilling": (["optim.lr=1e6", "distill.burn_in_steps=0", "trainer.log_every=1"],
                                  "distillation term nan): lower optim.lr or distill.alpha"),
    "exclude_unknown_class": (["data.exclude_classes=[12]"], "data.exclude_classes has class 12"),
    "validation_without_examples": (["data.eval_split=validation"], "needs data.validation_examples > 0"),
    # the exchange at a distance: codec, delay, fragments, URL
    "snapshot_codec_unknown": (["distill.snapshot_codec=int4"], "distill.snapshot_codec='int4' is not one of"),
    "exchange_delay_not_below_k": (["distill.exchange_every=4", "distill.exchange_delay=4"],
                                   "distill.exchange_delay=4 must be in [0, distill.exchange_every=4)"),
    "fragments_not_dividing_k": (["distill.exchange_every=6", "distill.fragments=4"],
                                 "distill.fragments=4 must be >= 1 and divide distill.exchange_every=6"),
    "fragments_more_than_modules": (["distill.exchange_every=10", "distill.fragments=10"],
                                    "distill.fragments=10: the model has only"),
    "exchange_url_package_missing": (["distill.exchange=filesystem", "distill.exchange_dir=gs://bucket/run"],
                                     "needs the gcsfs package: pip install 'codistill[gcs]'"),
    "exchange_url_with_credentials": (["distill.exchange=filesystem", "distill.exchange_dir=s3://key:secret@bucket/r"],
                                      "must not carry credentials"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_with_one_line(tmp_path: Path, case: str, capsys) -> None:
    overrides, expected = CASES[case]
    args = [*SHORT, *(overrides(tmp_path) if callable(overrides) else overrides)]
    capsys.readouterr()
    register_configs()
    with pytest.raises(SystemExit) as exit_info:
        train.preflight(args)  # composition: unknown options and typos
        train.run(make_config(["topology.mode=simulated", *args], base=ANY_MODEL), tmp_path / "run")
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("codistill: error:")]
    assert len(errors) == 1 and expected in errors[0], errors


@pytest.mark.parametrize("checkpoint_every", [1, 0])
def test_nan_loss_keeps_the_last_good_checkpoint(tmp_path: Path, capsys, checkpoint_every: int) -> None:
    """lr 1e6: the loss is finite through step 4 and NaN at step 5. With a checkpoint every step the newest kept is
    step 4's (finite, named by the message); without periodic checkpoints the message says none was written."""
    with pytest.raises(SystemExit):
        train.run(make_config(["topology.mode=simulated", *SHORT, "optim.lr=1e6", f"trainer.checkpoint_every={checkpoint_every}",
                               "trainer.log_every=1"]), tmp_path)
    (error,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("codistill: error:")]
    from codistill.io import checkpoint

    assert "is not finite at step 5" in error, error
    kept = checkpoint.complete_checkpoints(tmp_path / "checkpoints")
    if checkpoint_every == 0:
        assert kept == [] and "no checkpoint was written before it" in error, error
        return
    assert [p.name for p in kept] == ["step000000004", "step000000003"]
    assert f"the last good checkpoint is {kept[0]}" in error, error
    for ckpt in kept:
        for g in (0, 1):
            state = torch.load(ckpt / f"group{g}.pt", weights_only=True)["model"]
            assert all(torch.isfinite(v).all() for v in state.values())


def test_replicas_mismatch_under_torchrun() -> None:
    cfg = make_config(["topology.replicas=3"])
    with pytest.raises(ConfigError, match="topology.replicas=3 but world size 4"):
        resolve_layout(cfg.topology, env={"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})


@pytest.mark.torchrun
def test_world_size_not_divisible_by_groups() -> None:
    job = run_torchrun(3, ["topology.groups=2", "trainer.max_steps=2"], timeout=120)
    assert job.returncode != 0
    assert "world size 3 is not divisible by topology.groups=2" in job.stderr
