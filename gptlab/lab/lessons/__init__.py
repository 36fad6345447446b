"""The lessons `gptlab lab` knows. A new lesson is a `Lesson` subclass in this package, listed here."""

from __future__ import annotations

from gptlab.errors import ConfigError
from gptlab.lab.lesson import Lesson


def lessons() -> dict[str, Lesson]:
    from gptlab.lab.lessons.efficiency import EfficiencyLesson
    from gptlab.lab.lessons.lora_rank import LoraRankLesson
    from gptlab.lab.lessons.positions import PositionsLesson
    from gptlab.lab.lessons.quantization import QuantizationLesson
    from gptlab.lab.lessons.speedrun import SpeedrunLesson
    from gptlab.lab.lessons.stability import StabilityLesson
    from gptlab.lab.lessons.tying import TyingLesson

    found = [EfficiencyLesson(), LoraRankLesson(), PositionsLesson(), QuantizationLesson(), StabilityLesson(), TyingLesson(),
             SpeedrunLesson()]
    return {lesson.name: lesson for lesson in found}


def get_lesson(name: str) -> Lesson:
    known = lessons()
    if name not in known:
        raise ConfigError(f"unknown lesson {name!r}; lessons: {', '.join(known)} (see `gptlab lab list`)")
    return known[name]
