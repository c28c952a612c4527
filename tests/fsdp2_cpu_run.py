"""The trainer under FSDP2 on CPU, 2 processes on gloo (run by tests/test_engines.py under accelerate launch).

accelerate will not pick FSDP on CPU (with `use_cpu` the launch resolves to MULTI_CPU; see
erase/train/engines.py), so this sets the launched Accelerator's state to FSDP with an FSDP2
plugin of configs/accelerate/fsdp.yaml's settings before anything is prepared: from there on the
trainer runs accelerate's real FSDP2 path (`fully_shard`, DTensor parameters, sharded save_state /
load_state, a gathered state dict for the export).

    python fsdp2_cpu_run.py CONFIG OUT [MORE...]  ->  OUT/straight (CONFIG), OUT/resumed (CONFIG from its
                                                     step-2 checkpoint), OUT/more_<i> (each further config)
"""

import shutil
import sys
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from erase.config import load_config
from erase.train.config import RunConfig
from erase.train.trainer import Trainer


class Fsdp2Trainer(Trainer):
    def _accelerator(self):
        acc = super()._accelerator()
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, reshard_after_forward=True, state_dict_type="SHARDED_STATE_DICT",
            auto_wrap_policy="transformer_based_wrap")  # no class list: the module's own, as fsdp.yaml
        acc.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as AcceleratorState's init does
        return acc


def main(config: str, out: str, *more: str) -> None:
    cfg = load_config(RunConfig, config, [])
    out_dir = Path(out)
    for i, extra in enumerate(more):
        Fsdp2Trainer(load_config(RunConfig, extra, []), out_dir / f"more_{i}", extra, keep_process_group=True).run()
    straight = Fsdp2Trainer(cfg, out_dir / "straight", config, keep_process_group=True)
    straight.run()
    acc = straight.acc
    if acc.is_main_process:  # an interrupted twin: its step-2 checkpoint, and nothing after it
        (out_dir / "resumed" / "checkpoints").mkdir(parents=True)
        shutil.copytree(out_dir / "straight" / "checkpoints" / "step_2", out_dir / "resumed" / "checkpoints" / "step_2")
        if (out_dir / "straight" / "cache").is_dir():  # online ESD caches nothing
            shutil.copytree(out_dir / "straight" / "cache", out_dir / "resumed" / "cache")
    acc.wait_for_everyone()
    Fsdp2Trainer(cfg, out_dir / "resumed", config).run(resume="latest")


if __name__ == "__main__":
    main(*sys.argv[1:])
