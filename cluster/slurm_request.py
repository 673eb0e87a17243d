"""What a sweep asks SLURM for (the ``--backend slurm`` flags), parsed and validated offline.

Checks against the live cluster (the partition exists, it has GPUs) are in
:mod:`signlock.cluster.slurm`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from signlock.trainables.errors import ConfigError

MODES = ("ray", "array")
TIME_FORMATS = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_MEM = re.compile(r"^(\d+)\s*([KMGT]?)B?$", re.IGNORECASE)
_MEM_UNIT_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_time_minutes(text: str) -> int:
    """A SLURM ``--time`` value in whole minutes (seconds round up), as sbatch reads it."""
    match = _TIME.match(text.strip())
    if match is None:
        raise ConfigError("--time", text, f"a SLURM time limit ({TIME_FORMATS})")
    days, first, second, third = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
        total_s = ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    elif third is not None:  # HH:MM:SS
        total_s = (int(first) * 60 + int(second)) * 60 + int(third)
    elif second is not None:  # MM:SS
        total_s = int(first) * 60 + int(second)
    else:  # MM
        total_s = int(first) * 60
    if total_s <= 0:
        raise ConfigError("--time", text, "a time limit above zero")
    return -(-total_s // 60)


def parse_mem_mb(text: str) -> int:
    """A SLURM ``--mem`` value (``16G``, ``16000M``, ``1T``; no unit: megabytes) in MB."""
    match = _MEM.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ConfigError("--mem", text, "a memory size such as 16G, 16000M or 1T")
    return max(1, int(int(match.group(1)) * _MEM_UNIT_MB[match.group(2).upper()]))


def flag(help_text: str | None = None, **argparse_options: object) -> dict[str, object]:
    """A request field's command-line flag: ``--<field-name>`` unless ``flag=`` says otherwise,
    with these ``add_argument`` options (signlock.orchestrator.commands.flags reads them)."""
    return {"help": help_text, **argparse_options}


@dataclass(frozen=True)
class SlurmRequest:
    """One SLURM submission: an allocation running a Ray cluster (``mode="ray"``), or one array
    task per trial (``mode="array"``). Each field is one ``--backend slurm`` flag."""

    partition: str = field(metadata=flag("SLURM partition (required with --backend slurm)"))
    time: str = field(metadata=flag("job time limit, HH:MM:SS (required with --backend slurm)"))
    nodes: int = field(default=1, metadata=flag("nodes of the allocation (default 1)"))
    gpus_per_node: int = field(default=0, metadata=flag())
    cpus_per_node: int | None = field(default=None, metadata=flag())  # None: the partition's
    mem: str | None = field(default=None, metadata=flag("memory per node, e.g. 64G"))
    account: str | None = field(default=None, metadata=flag())
    qos: str | None = field(default=None, metadata=flag())
    constraint: str | None = field(default=None, metadata=flag())
    setup: tuple[str, ...] = field(
        default=(),
        metadata=flag(
            "a shell line run before the job (e.g. 'module load cuda'); repeatable",
            flag="--slurm-setup", repeatable=True, metavar="CMD",
        ),
    )  # fmt: skip
    max_requeues: int = field(
        default=3, metadata=flag("requeues after time limits or preemption (default 3)")
    )
    mode: str = field(
        default="ray",
        metadata=flag(
            "ray: one job running a Ray cluster (default); array: one array task per trial",
            flag="--slurm-mode", choices=MODES,
        ),
    )  # fmt: skip
    array_parallelism: int | None = field(
        default=None, metadata=flag("array tasks running at once")
    )

    def __post_init__(self) -> None:
        if not self.partition:
            raise ConfigError("--partition", self.partition, "a SLURM partition name")
        parse_time_minutes(self.time)
        if self.mem is not None:
            parse_mem_mb(self.mem)
        if self.nodes < 1:
            raise ConfigError("--nodes", self.nodes, "an integer >= 1")
        if self.gpus_per_node < 0:
            raise ConfigError("--gpus-per-node", self.gpus_per_node, "an integer >= 0")
        if self.cpus_per_node is not None and self.cpus_per_node < 1:
            raise ConfigError("--cpus-per-node", self.cpus_per_node, "an integer >= 1")
        if self.max_requeues < 0:
            raise ConfigError("--max-requeues", self.max_requeues, "an integer >= 0")
        if self.mode not in MODES:
            raise ConfigError("--slurm-mode", self.mode, "one of " + ", ".join(MODES))
        if self.array_parallelism is not None and self.array_parallelism < 1:
            raise ConfigError("--array-parallelism", self.array_parallelism, "an integer >= 1")
        if self.mode == "array" and self.nodes != 1:
            raise ConfigError("--nodes", self.nodes, "1 in array mode (one task per trial)")

    @property
    def timeout_min(self) -> int:
        return parse_time_minutes(self.time)

    def to_dict(self) -> dict[str, object]:
        return {**self.__dict__, "setup": list(self.setup)}

    @staticmethod
    def from_dict(data: dict[str, object]) -> SlurmRequest:
        return SlurmRequest(**{**data, "setup": tuple(data.get("setup") or ())})  # type: ignore[arg-type]
