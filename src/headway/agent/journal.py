"""The switch journal: written (atomically) before each step of a switch, removed after it.

After a crash, the step says how far the switch got. Before ``stop`` the old
app was never touched, so the switch is simply dropped. From ``stop`` on the
agent had committed to the new release, so it finishes the switch.

Config steps: ``config`` (fetching, staging and validating the release's config
bundle; nothing active was touched, so it is dropped) and ``reload`` (a
config-only change applied to the running app: the files are being put in
place and the app told to reload; finished after a crash by putting the
revision in place again and reloading again).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from headway.agent.files import atomic_write_json, read_json, remove
from headway.agent.target import Target

JOURNAL_FILE = "journal.json"


class Step(StrEnum):
    FETCH = "fetch"
    STAGE = "stage"
    CONFIG = "config"
    STOP = "stop"
    FLIP = "flip"
    START = "start"
    RELOAD = "reload"

    @property
    def committed(self) -> bool:
        """From here on the host may have changed: finish the switch rather than drop it."""
        return self in (Step.STOP, Step.FLIP, Step.START, Step.RELOAD)


@dataclass(frozen=True)
class Journal:
    step: Step
    target: Target
    previous_pid: int | None = None
    previous_release: int | None = None


def write_journal(state_dir: Path, journal: Journal) -> None:
    atomic_write_json(
        state_dir / JOURNAL_FILE,
        {
            "step": journal.step.value,
            "target": journal.target.to_json(),
            "previous_pid": journal.previous_pid,
            "previous_release": journal.previous_release,
        },
    )


def read_journal(state_dir: Path) -> Journal | None:
    data = read_json(state_dir / JOURNAL_FILE)
    if data is None:
        return None
    target = Target.from_json(data.get("target"))
    try:
        step = Step(str(data.get("step")))
    except ValueError:
        return None
    if target is None:
        return None
    pid, release = data.get("previous_pid"), data.get("previous_release")
    return Journal(
        step,
        target,
        pid if isinstance(pid, int) else None,
        release if isinstance(release, int) else None,
    )


def clear_journal(state_dir: Path) -> None:
    remove(state_dir / JOURNAL_FILE)
