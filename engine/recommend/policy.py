"""The race's decisions as one pure function of the validation curves seen so far.

`decide` is the whole policy: given the arms (the grid's strategies of one dataset x backbone),
the seeds, the epoch budget and what each cell has shown (its validation values per epoch), it
says which cells to train next and up to which epoch, which arms are stopped where, and, once
nothing is left to train, which arm it recommends. The live race (race.py) and the replay of a
finished grid (replay.py) call it with the same kind of view, so they decide the same way.

The race, in full:
1. Epochs (successive halving) on the first seed: every arm trains to the first rung; at each
   rung but the last, the arms are ranked by their best validation value so far and the top
   1/eta stay (at least one); the others stop there. The survivors train to the next rung.
2. Phase rule: an arm whose strategy trains the head alone at first and the backbone later
   (LP-FT, gradual unfreezing) is not judged at a rung before it has trained the backbone for
   `phase_epochs` epochs (counted from its metrics: the epochs whose trainable parameter count
   exceeds its first epoch's). Until then it is carried to the next rung, taking one of the
   1/eta places; the best judged arm always continues, so a rung of n arms keeps
   max(ceil(n / eta), carried + 1). At the last rung every arm has run its whole schedule and
   is judged.
3. Seeds: at the last rung the best `finalists` arms are in contention while they are within
   `seed_margin` of the leader (mean over the seeds they have run); each further seed of the
   grid is trained, in full, for the arms still in contention only, until one is left ahead by
   more than the margin or the seeds run out.
The recommendation is the leader: the highest mean best-validation value over the seeds all
contenders share (ties go to the arm listed first). Test metrics are never read.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class RaceSettings:
    """How the race spends its budget (the `recommend:` section of a grid YAML, or overrides)."""

    rungs: list[int] = field(default_factory=list)  # epochs at which arms are judged; [] = geometric
    eta: int = 2  # at each rung the top 1/eta of the arms continue
    min_rung: int = 2  # the geometric default's first rung is at least this many epochs
    phase_epochs: int = 2  # backbone epochs a head-first arm runs before it may be judged
    phase_aware: bool = True  # False judges head-first arms like the others (to show the rule matters)
    finalists: int = 2  # arms of the last rung that may get further seeds
    seed_margin: float = 0.02  # finalists this close to the leader (validation metric) get another seed

    def __post_init__(self):
        if self.eta < 2:
            raise ValueError(f"recommend.eta must be at least 2, got {self.eta}")
        for name in ("min_rung", "phase_epochs", "finalists"):
            if getattr(self, name) < 1:
                raise ValueError(f"recommend.{name} must be at least 1, got {getattr(self, name)}")
        if self.seed_margin < 0:
            raise ValueError(f"recommend.seed_margin must be >= 0, got {self.seed_margin}")
        if list(self.rungs) != sorted(set(self.rungs)) or any(r < 1 for r in self.rungs):
            raise ValueError(f"recommend.rungs must be increasing positive epochs, got {self.rungs}")


@dataclass(frozen=True)
class Arm:
    """One strategy of the race; `head_first`: its schedule trains the head alone before the backbone."""

    name: str
    head_first: bool = False


@dataclass(frozen=True)
class EpochPoint:
    """One epoch of a cell as the policy sees it: the validation value and how many parameters trained
    (`seconds`, its device time, is for the cost accounting; the policy never reads it)."""

    value: float
    trainable: int
    seconds: float = 0.0


@dataclass(frozen=True)
class CellView:
    """What the race has seen of one cell: its epochs so far, and whether it has finished
    (run its schedule, stopped early by its patience, or failed for good)."""

    points: tuple[EpochPoint, ...] = ()
    done: bool = False


@dataclass(frozen=True)
class Job:
    """Train cell (arm, seed) until it has `until_epoch` epochs (or finishes earlier)."""

    arm: str
    seed: int
    until_epoch: int


@dataclass(frozen=True)
class Stop:
    """Where an arm left the race: the rung (epochs), the seeds it had, its value there."""

    rung: int
    seeds: int
    value: float


@dataclass
class Decision:
    jobs: list[Job]
    stops: dict[str, Stop]
    rungs: list[int]
    carried: dict[int, list[str]]  # rung -> head-first arms passed on unjudged by the phase rule
    recommendation: str | None = None
    scores: dict[str, float] = field(default_factory=dict)  # the contenders' final means

    @property
    def finished(self) -> bool:
        return self.recommendation is not None


def rung_epochs(settings: RaceSettings, epochs: int) -> list[int]:
    """The rungs, always ending at the full budget: `settings.rungs` below it, or epochs / eta^k."""
    if settings.rungs:
        return [r for r in settings.rungs if r < epochs] + [epochs]
    rungs, rung = [epochs], epochs // settings.eta
    while rung >= settings.min_rung:
        rungs.insert(0, rung)
        rung //= settings.eta
    return rungs


def decide(arms: Sequence[Arm], seeds: Sequence[int], epochs: int, settings: RaceSettings,
           seen: Mapping[tuple[str, int], CellView]) -> Decision:
    """The race's next step from the cells seen so far (missing cells count as not started).

    Returns a Decision with the jobs to run now (all of one rung), or none and a recommendation.
    """
    rungs = rung_epochs(settings, epochs)
    order = {arm.name: i for i, arm in enumerate(arms)}
    decision = Decision(jobs=[], stops={}, rungs=rungs, carried={})
    alive = list(arms)
    for rung in rungs:
        decision.jobs = _missing(alive, [seeds[0]], rung, seen)
        if decision.jobs:
            return decision
        if rung < epochs:
            alive = _cut(alive, rung, seeds[0], settings, seen, decision, order)
    return _seed_stage(alive, seeds, epochs, settings, seen, decision, order)


def _missing(arms: Sequence[Arm], seeds: Sequence[int], rung: int,
             seen: Mapping[tuple[str, int], CellView]) -> list[Job]:
    jobs = []
    for arm in arms:
        for seed in seeds:
            view = seen.get((arm.name, seed), CellView())
            if not view.done and len(view.points) < rung:
                jobs.append(Job(arm.name, seed, rung))
    return jobs


def best_value(view: CellView, rung: int) -> float:
    """The best validation value within the first `rung` epochs (the weights the cell would test)."""
    values = [p.value for p in view.points[:rung]]
    return max(values) if values else -math.inf


def backbone_epochs(view: CellView, rung: int) -> int:
    """Epochs within the first `rung` that trained more parameters than the first epoch did."""
    points = view.points[:rung]
    return sum(p.trainable > points[0].trainable for p in points) if points else 0


def _judged(arm: Arm, view: CellView, rung: int, settings: RaceSettings) -> bool:
    # Only what was known at this rung counts: a cell that finished later was not finished then.
    finished = view.done and len(view.points) <= rung
    if not (settings.phase_aware and arm.head_first) or finished:
        return True
    return backbone_epochs(view, rung) >= settings.phase_epochs


def _cut(alive: list[Arm], rung: int, seed: int, settings: RaceSettings, seen, decision: Decision,
         order: dict[str, int]) -> list[Arm]:
    """The arms that go on from this rung; the others get their Stop."""
    views = {arm.name: seen[(arm.name, seed)] for arm in alive}
    judged = [arm for arm in alive if _judged(arm, views[arm.name], rung, settings)]
    carried = [arm for arm in alive if arm not in judged]
    if carried:
        decision.carried[rung] = [arm.name for arm in carried]
    ranked = sorted(judged, key=lambda a: (-best_value(views[a.name], rung), order[a.name]))
    # Carried arms take their places in the 1/eta that continue (the rung's budget stays that of
    # plain successive halving), but the best judged arm always continues.
    keep = ranked[:max(1, math.ceil(len(alive) / settings.eta) - len(carried))]
    for arm in ranked[len(keep):]:
        decision.stops[arm.name] = Stop(rung, 1, best_value(views[arm.name], rung))
    return [arm for arm in alive if arm in keep or arm in carried]


def _seed_stage(alive: list[Arm], seeds: Sequence[int], epochs: int, settings: RaceSettings, seen,
                decision: Decision, order: dict[str, int]) -> Decision:
    """Ranks the last rung's arms, then spends further seeds on those in contention only."""
    used = 1
    contenders = alive
    while True:
        means = {arm.name: sum(best_value(seen[(arm.name, s)], epochs) for s in seeds[:used]) / used
                 for arm in contenders}
        ranked = sorted(contenders, key=lambda a: (-means[a.name], order[a.name]))
        leader = means[ranked[0].name]
        close = [a for a in ranked[1:settings.finalists] if leader - means[a.name] <= settings.seed_margin]
        in_contention = ranked[:1] + close
        for arm in ranked:
            if arm not in in_contention:
                decision.stops[arm.name] = Stop(epochs, used, means[arm.name])
        if len(in_contention) == 1 or used == len(seeds):
            decision.recommendation = ranked[0].name
            decision.scores = means
            for arm in in_contention[1:]:
                decision.stops[arm.name] = Stop(epochs, used, means[arm.name])
            return decision
        contenders, used = in_contention, used + 1
        decision.jobs = _missing(contenders, [seeds[used - 1]], epochs, seen)
        if decision.jobs:
            return decision


def reveal(cell: CellView, epochs: int) -> CellView:
    """The cell as the race sees it after training it until `epochs` (from its full record)."""
    return CellView(cell.points[:epochs], done=cell.done and len(cell.points) <= epochs)


def replay(arms: Sequence[Arm], seeds: Sequence[int], epochs: int, settings: RaceSettings,
           cells: Mapping[tuple[str, int], CellView]) -> tuple[Decision, dict[tuple[str, int], CellView]]:
    """Runs `decide` on recorded cells, revealing each only as far as the jobs so far asked.

    Returns the last decision and the views it was made from (what the race trained). The
    decision is `decide`'s on the cells themselves whenever they hold no more than the race
    trained: `decide` reads no epoch beyond each rung, nor a finish that came after it.

    Raises:
        ValueError: naming a cell that the race needs further than `cells` has it.
    """
    revealed: dict[tuple[str, int], int] = {}
    while True:
        seen = {key: reveal(cells[key], n) for key, n in revealed.items()}
        decision = decide(arms, seeds, epochs, settings, seen)
        if not decision.jobs:
            return decision, seen
        for job in decision.jobs:
            key = (job.arm, job.seed)
            cell = cells.get(key, CellView())
            if not cell.done and len(cell.points) < job.until_epoch:
                raise ValueError(f"cell {job.arm} seed {job.seed} has {len(cell.points)} epochs and is not "
                                 f"finished; the race needs {job.until_epoch}")
            revealed[key] = job.until_epoch
