"""Train G codistilling groups. The same command runs in one process (simulated workers) or under torchrun.

    # one process, 2 groups x 1 replica on the CPU or one GPU (simulated workers)
    codistill-train trainer.max_steps=600
    # 2 groups x 2 replicas in one process: numerically the same run as the torchrun line below
    codistill-train topology.replicas=2
    # 4 processes on one node: world = G x R = 2 x 2
    torchrun --standalone --nproc-per-node=4 -m codistill.train topology.groups=2
    # two nodes (run on each; same --rdzv-id so both write to one run directory)
    torchrun --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=HEAD:29500 --rdzv-id=exp1 \\
        -m codistill.train topology.groups=2

Every option lives in codistill/config.py; `codistill-train --help` lists the config groups and values.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Optional

import hydra
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from codistill.build import build_trainer, components_from_config, exchange_directory, validate_components
from codistill.components.registry import Components
from codistill.config import installed, register_configs, validate
from codistill.distributed import sharding
from codistill.distributed.exchange import filesystem
from codistill.distributed.failure import log_traceback
from codistill.distributed.preemption import EXIT_PREEMPTED, StopFlag, parse_signals
from codistill.distributed.topology import Topology, launched_by_torchrun, resolve_layout
from codistill.errors import (  # noqa: F401  (RunError re-exported: `from codistill.train import RunError`)
    ConfigError, DataFormatError, LocalWorkTimeout, NonFiniteLossError, Preempted, RunError, StartupError, StorageError,
)
from codistill.io import checkpoint, trajectory
from codistill.runtime import print_error, torch_problem
from codistill.io.reporting import setup_logging
from codistill.tools.plot import plot_run_safely


@functools.lru_cache(maxsize=None)
def run_id() -> str:
    """A run id every rank of one launch agrees on (Hydra's default, a timestamp, differs between processes).

    torchrun gives all workers of a job the same TORCHELASTIC_RUN_ID (random under --standalone, --rdzv-id
    otherwise). Without one, the rendezvous store's address and port are shared by the job's ranks.
    Computed once per process: Hydra composes the config again for every job of a --multirun sweep, and every job
    must land in the one sweep directory (`<sweep dir>/<job num>`), not in a directory of its own timestamp.
    """
    rid = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if rid != "none":
        return rid
    if "MASTER_PORT" in os.environ and "RANK" in os.environ:
        return f"torchrun-{os.environ.get('MASTER_ADDR', 'local')}-{os.environ['MASTER_PORT']}"
    from datetime import datetime

    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def output_subdir() -> str | None:
    """Hydra writes its .hydra/ record of the config once, from global rank 0."""
    return ".hydra" if os.environ.get("RANK", "0") == "0" else None


def fail(message: str) -> "NoReturn":  # type: ignore[name-defined]  # noqa: F821
    print_error(message)
    sys.exit(2)


KNOWN = (NonFiniteLossError, ConfigError, StorageError, StartupError, DataFormatError, LocalWorkTimeout)


def one_line(e: BaseException) -> str:
    """What a failed run prints: the message of the errors that say what to do, else the error's type and first line."""
    if isinstance(e, DataFormatError):  # a bad sample met mid-run (in this rank's batch only)
        return DataFormatError.line(e)
    if isinstance(e, KNOWN):
        return str(e)
    first = (str(e).strip().splitlines() or [""])[0]
    if isinstance(e, dist.DistError) or any(word in first for word in ("gloo", "NCCL", "Connection closed")):
        return f"a collective failed: a peer rank died or stopped answering ({first[:200]})"
    return f"{type(e).__name__}: {first[:300]}"


def train(cfg: DictConfig, run_dir: Path, components: Optional[Components] = None) -> dict | None:
    """Validate, build the components (from config unless given), start the topology, train, shut down.

    Returns the final evaluation (on global rank 0); raises RunError with one line when the run cannot go on, and
    Preempted when a signal of trainer.preempt_signals stopped it early (after a checkpoint every rank agreed on).
    """
    try:
        if problem := torch_problem():
            raise ConfigError(problem)
        layout = resolve_layout(cfg.topology)
        validate(cfg, layout.replicas)
        if components is None:
            validate_components(cfg)
            components = components_from_config(cfg)
        if dist.is_available() and dist.is_initialized():
            raise ConfigError(
                "a process group is already initialised in this process: every run needs a fresh process "
                "(under torchrun, launch one torchrun per sweep point)"
            )
        sharding.block_classes(cfg.topology.fsdp_blocks)  # topology.fsdp_blocks import (matched to modules later)
        # output dir writable; the resume checkpoint fits this run
        resume = checkpoint.preflight(run_dir, layout, cfg.trainer.resume, cfg.topology.strategy, cfg.distill.mode)
        if resume is not None:  # it keeps its burn-in and refuses drift (seed, batch, schedule, data, model)
            recorded = trajectory.written(resume, checkpoint.MANIFEST)
            trajectory.adopt_burn_in(cfg.distill, recorded)
            trajectory.check(OmegaConf.to_container(cfg, resolve=True), cfg.trainer.resume_allow_changes, recorded, resume)
        if cfg.distill.exchange == "filesystem":
            filesystem.claim(*exchange_directory(cfg, run_dir), cfg.topology.timeout_s)  # usable, not another run's
    except ConfigError as e:
        raise RunError(str(e)) from None
    setup_logging(run_dir, layout.rank, console=layout.rank == 0)
    with StopFlag(parse_signals(cfg.trainer.preempt_signals)) as stop_flag:
        try:
            topo = Topology.start(layout, cfg.topology.device, cfg.topology.timeout_s, cfg.topology.io_bandwidth_mb_s)
        except StartupError as e:
            raise RunError(str(e)) from None
        trainer, clean, error = None, False, None
        try:
            topo.check_agree(str(run_dir.resolve()), "run directory")
            trainer = build_trainer(cfg, topo, run_dir, components, stop_flag)
            trainer.fit()
            clean = True
            preempted = trainer.preempted
            result = {"per_group": trainer.final_eval[0], "run": trainer.final_eval[1]} if trainer.final_eval else None
        except Exception as e:  # any rank, any phase: the job's first failure ends every rank with one line
            if topo.failures is None and not isinstance(e, KNOWN):
                raise  # simulated mode: an unexpected error keeps its traceback
            log_traceback(e)
            error = topo.fail(one_line(e), e)
        finally:
            if trainer is not None:
                trainer.close()  # flushes the filesystem exchange's pending snapshot
            del trainer
            topo.shutdown(clean)
            if error is not None:
                topo.linger()  # rank 0 keeps the store up until every rank has printed the failure
    if error is not None:
        raise RunError(error, printed=topo.failures is not None)
    if preempted is not None:
        raise preempted
    if topo.is_main and cfg.logger.plots:
        plot_run_safely(run_dir)  # after shutdown: no other rank waits in a collective while rank 0 draws
    return result


def run(cfg: DictConfig, run_dir: Path) -> dict | None:
    """`train` for the command line: a RunError is one `codistill: error:` line and exit code 2; a preempted run
    says where its checkpoint is and exits with EXIT_PREEMPTED (3)."""
    try:
        return train(cfg, run_dir)
    except RunError as e:
        if e.printed:
            sys.exit(2)
        fail(str(e))
    except Preempted as e:
        print(f"codistill: preempted: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_PREEMPTED)


@hydra.main(config_path=str(Path(__file__).resolve().parent / "conf"), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    if HydraConfig.get().mode == RunMode.MULTIRUN and launched_by_torchrun():
        fail("--multirun under torchrun would re-initialise the process group in one process: "
             "launch one torchrun per sweep point, or sweep in simulated mode (see docs/launching.md)")
    run(cfg, Path(HydraConfig.get().runtime.output_dir))


def without_config_dirs(argv: list[str]) -> tuple[list[str], list[str]]:
    """(argv without --config-dir/-cd DIR, the directories it named)."""
    rest, dirs, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(argv[i + 1])
            i += 2
            continue
        if a.startswith("--config-dir="):
            dirs.append(a.split("=", 1)[1])
        else:
            rest.append(a)
        i += 1
    return rest, dirs


def preflight(argv: list[str]) -> None:
    """Compose the config once before Hydra does, to turn a typo or an unknown option into one line.

    Hydra reports composition errors over several lines; here the first line and the offending key suffice.
    A user's config directory (--config-dir DIR) joins the search path as it does for Hydra; sweeps and Hydra's
    other flags are left to Hydra.
    """
    launcher = next((a.split("=", 1)[1] for a in argv if a.startswith("hydra/launcher=")), "")
    if launcher.startswith("submitit") and not installed("hydra_plugins.hydra_submitit_launcher"):
        fail(f"hydra/launcher={launcher} needs the submitit launcher: pip install 'codistill[slurm]'")
    argv, config_dirs = without_config_dirs(argv)
    if any(a.startswith("-") for a in argv):
        return
    overrides = [a for a in argv if a.startswith("hydra.searchpath=") or not a.lstrip("+~").startswith(("hydra.", "hydra/"))]
    if config_dirs:
        overrides.append(f"hydra.searchpath=[{','.join('file://' + str(Path(d).resolve()) for d in config_dirs)}]")
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(str(Path(__file__).parent / "conf"), version_base="1.3"):
            compose("config", overrides=overrides)
    except Exception as e:  # any composition error: Hydra's own types vary by cause
        text = str(e) + (f"\n{e.__cause__}" if e.__cause__ else "")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        meta = ("full_key:", "reference_type", "object_type", "To append", "Config search path", "provider=")
        fail("; ".join(line for line in lines if not line.startswith(meta))[:300] or type(e).__name__)


def main() -> None:
    register_configs()
    # use_cache: Hydra copies the resolver cache of the sweep's config into every job's config (also the
    # submitit launcher's), so the jobs of a sweep resolve the same run id wherever they run.
    OmegaConf.register_new_resolver("codistill_run_id", run_id, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("codistill_output_subdir", output_subdir, replace=True)
    preflight(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    # Run the functions of the importable module, not of __main__: launchers that run sweep points elsewhere
    # (submitit) pickle the registered resolvers by module name, and `__main__.run_id` does not exist there.
    from codistill import train

    train.main()
