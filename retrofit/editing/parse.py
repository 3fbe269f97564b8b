"""Human edits of an interpretable model: parse them, resolve names, and reject conflicts early.

An edit is a dict (the JSON form of an edits file) with an "op":
  {"op": "rename", "feature": F, "name": "stripes"}               the feature's global name
  {"op": "rename", "class": C, "feature": F, "name": "stripes"}   why class C uses feature F
  {"op": "forbid", "class": C, "feature": F}                      class C may not use feature F
  {"op": "pin", "class": C, "feature": F}                         class C must use feature F
  {"op": "drop", "feature": F}                                    no class may use feature F
      (qpm refills its slot with a new feature; add "refill": false to leave the slot unused)
  {"op": "per_class", "class": C, "count": k}                     class C uses exactly k features
F is a feature position or name, C a class index or name. Everything that can be checked
without solving is checked here, so an infeasible or conflicting edit fails before any work.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from retrofit.errors import EditError

DEFAULT_EDIT_TIME_LIMIT = 60.0  # seconds a re-solve under edits may take by default

if TYPE_CHECKING:
    from retrofit.model.interpretable import InterpretableModel

OPS = ("rename", "forbid", "pin", "drop", "per_class")
_KEYS = {
    "rename": ({"feature", "name"}, {"class"}),
    "forbid": ({"class", "feature"}, set()),
    "pin": ({"class", "feature"}, set()),
    "drop": ({"feature"}, {"refill"}),
    "per_class": ({"class", "count"}, set()),
}


@dataclass(frozen=True)
class Edit:
    """One edit with its class and feature resolved to indices."""

    op: str
    feature: int | None = None
    cls: int | None = None
    name: str | None = None
    count: int | None = None
    index: int = 0
    refill: bool = (
        True  # drop only: qpm refills the slot  # position in the list the user gave, for messages
    )

    def describe(self, imodel: InterpretableModel) -> str:
        """'edit 3 (pin class 'cat' to feature 7 'stripes')', as error messages name it."""
        parts = [self.op]
        if self.cls is not None:
            parts.append(f"class {imodel.class_names[self.cls]!r}")
        if self.feature is not None:
            parts.append(f"feature {self.feature} {imodel.feature_name(self.feature)!r}")
        if self.name is not None:
            parts.append(f"as {self.name!r}")
        if self.count is not None:
            parts.append(f"to {self.count}")
        return f"edit {self.index} ({' '.join(parts)})"

    def to_dict(self, imodel: InterpretableModel) -> dict[str, Any]:
        """JSON form with indices and, for readers, the names they had when applied."""
        data: dict[str, Any] = {"op": self.op}
        if self.cls is not None:
            data["class"] = self.cls
            data["class_name"] = imodel.class_names[self.cls]
        if self.feature is not None:
            data["feature"] = self.feature
            data["feature_name"] = imodel.feature_name(self.feature)
        if self.name is not None:
            data["name"] = self.name
        if self.count is not None:
            data["count"] = self.count
        if not self.refill:
            data["refill"] = False
        return data


@dataclass
class EditPlan:
    """The constraints every edit adds, in model indices (class, feature position)."""

    edits: list[Edit]
    forbidden: set[tuple[int, int]] = field(default_factory=set)
    pinned: set[tuple[int, int]] = field(default_factory=set)
    dropped: set[int] = field(default_factory=set)
    counts: dict[int, int] = field(default_factory=dict)  # per_class edits only
    renames: dict[int, str] = field(default_factory=dict)
    pair_renames: dict[tuple[int, int], str] = field(default_factory=dict)

    @property
    def needs_solve(self) -> bool:
        """Renames only change names; everything else changes the head."""
        return bool(self.forbidden or self.pinned or self.dropped or self.counts)


def parse_edits(imodel: InterpretableModel, edits: Any) -> list[Edit]:
    """Resolve every edit's class and feature; unknown names list close matches."""
    if isinstance(edits, dict):
        edits = [edits]
    if not isinstance(edits, (list, tuple)):
        raise EditError(
            f"edits must be a list of edit dicts (see retrofit.editing.parse), got {type(edits).__name__}."
        )
    return [_parse_one(imodel, raw, i) for i, raw in enumerate(edits)]


def plan_edits(imodel: InterpretableModel, edits: list[Edit]) -> EditPlan:
    """Collect the constraints and fail on conflicts and infeasible combinations."""
    plan = EditPlan(edits=list(edits))
    seen: dict[tuple[str, Any], Edit] = {}
    for edit in edits:
        pair = (edit.cls, edit.feature)
        if edit.op == "forbid":
            _no_clash(imodel, seen, ("pin", pair), edit, "forbids a link another edit pins")
            plan.forbidden.add(pair)  # type: ignore[arg-type]
        elif edit.op == "pin":
            _no_clash(imodel, seen, ("forbid", pair), edit, "pins a link another edit forbids")
            plan.pinned.add(pair)  # type: ignore[arg-type]
        elif edit.op == "drop" and not edit.refill:  # the slot stays, no class may use it
            plan.forbidden |= {(c, edit.feature) for c in range(imodel.num_classes)}  # type: ignore[misc]
        elif edit.op == "drop":
            plan.dropped.add(edit.feature)  # type: ignore[arg-type]
        elif edit.op == "per_class":
            earlier = seen.get(("per_class", edit.cls))
            if earlier is not None and earlier.count != edit.count:
                raise EditError(
                    f"{edit.describe(imodel)} conflicts with {earlier.describe(imodel)}: one "
                    "class can have only one per_class count. Keep one of them."
                )
            plan.counts[edit.cls] = edit.count  # type: ignore[index,assignment]
        elif edit.cls is None:
            _same_name(imodel, seen, ("rename", edit.feature), edit)
            plan.renames[edit.feature] = edit.name  # type: ignore[index,assignment]
        else:  # naming why a class uses a feature asserts the link: it acts as a pin
            _same_name(imodel, seen, ("rename", pair), edit)
            _no_clash(imodel, seen, ("forbid", pair), edit, "names a link another edit forbids")
            plan.pair_renames[pair] = edit.name  # type: ignore[index,assignment]
            seen.setdefault(("pin", pair), edit)
        key = ("per_class", edit.cls) if edit.op == "per_class" else (edit.op, pair)
        seen.setdefault(key, edit)
        if edit.op == "rename" and edit.cls is None:
            seen.setdefault(("rename", edit.feature), edit)
        if edit.op == "drop":
            seen.setdefault(("drop", edit.feature), edit)
    plan.pinned |= set(plan.pair_renames)
    _check_dropped(imodel, plan, seen)
    _check_counts(imodel, plan)
    return plan


def class_counts(imodel: InterpretableModel, plan: EditPlan) -> list[int]:
    """How many features each class uses after the edits: its per_class edit, else its current count."""
    current = (imodel.head.weight != 0).sum(dim=1).tolist()
    return [int(plan.counts.get(c, current[c])) for c in range(imodel.num_classes)]


def _parse_one(imodel: InterpretableModel, raw: Any, index: int) -> Edit:
    if isinstance(raw, Edit):
        return raw
    if not isinstance(raw, dict):
        raise EditError(f"edit {index} must be a dict with an 'op', got {raw!r}.")
    op = raw.get("op")
    if op not in OPS:
        raise EditError(f"edit {index} has op {op!r}; choose one of {list(OPS)}.")
    required, optional = _KEYS[op]
    missing = sorted(required - set(raw))
    extra = sorted(set(raw) - required - optional - {"op", "class_name", "feature_name"})
    if missing or extra:
        raise EditError(
            f"edit {index} ({op}) "
            + (f"misses {missing}" if missing else f"has unknown keys {extra}")
            + f"; a {op} edit takes {sorted(required | optional)}."
        )
    cls = _class_index(imodel, raw["class"], index) if "class" in raw else None
    feature = feature_index(imodel, raw["feature"], f"edit {index}") if "feature" in raw else None
    name = raw.get("name")
    if op == "rename" and (not isinstance(name, str) or not name.strip()):
        raise EditError(f"edit {index} (rename) needs a non-empty 'name' string, got {name!r}.")
    count = raw.get("count")
    if op == "per_class" and (
        not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= imodel.n_features
    ):
        raise EditError(
            f"edit {index} (per_class) needs a 'count' between 1 and n_features="
            f"{imodel.n_features}, got {count!r}."
        )
    refill = raw.get("refill", True)
    if not isinstance(refill, bool):
        raise EditError(f"edit {index} (drop): 'refill' must be true or false, got {refill!r}.")
    return Edit(op, feature, cls, name.strip() if name else None, count, index, refill)


def _class_index(imodel: InterpretableModel, ref: Any, index: int) -> int:
    names = imodel.class_names
    if isinstance(ref, int) and not isinstance(ref, bool):
        if 0 <= ref < len(names):
            return ref
        raise EditError(f"edit {index}: class {ref} is out of range (0..{len(names) - 1}).")
    if isinstance(ref, str):
        if ref in names:
            return names.index(ref)
        raise EditError(f"edit {index}: unknown class {ref!r}.{_close(ref, names)}")
    raise EditError(f"edit {index}: 'class' must be a class index or name, got {ref!r}.")


def feature_index(imodel: InterpretableModel, ref: Any, where: str) -> int:
    """A feature position from a position or a (unique) feature name; unknown names list close
    matches. `where` starts the error message (e.g. 'edit 3')."""
    n = imodel.n_features
    if isinstance(ref, int) and not isinstance(ref, bool):
        if 0 <= ref < n:
            return ref
        raise EditError(f"{where}: feature {ref} is out of range (0..{n - 1}).")
    if isinstance(ref, str):
        names = [imodel.feature_name(j) for j in range(n)]
        hits = [j for j, name in enumerate(names) if name == ref]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise EditError(
                f"{where}: feature name {ref!r} is ambiguous (features {hits}); "
                "use a feature position instead."
            )
        raise EditError(f"{where}: unknown feature {ref!r}.{_close(ref, names)}")
    raise EditError(f"{where}: 'feature' must be a feature position or name, got {ref!r}.")


def _close(ref: str, names: list[str]) -> str:
    matches = difflib.get_close_matches(ref, sorted(set(names)), n=5, cutoff=0.5)
    return f" Close matches: {matches}." if matches else " No close matches."


def _no_clash(imodel: InterpretableModel, seen: dict, key: tuple, edit: Edit, what: str) -> None:
    other = seen.get(key)
    if other is not None:
        raise EditError(
            f"{edit.describe(imodel)} {what}: it conflicts with {other.describe(imodel)}. "
            "Keep one of them."
        )


def _same_name(imodel: InterpretableModel, seen: dict, key: tuple, edit: Edit) -> None:
    other = seen.get(key)
    if other is not None and other.name != edit.name:
        raise EditError(
            f"{edit.describe(imodel)} conflicts with {other.describe(imodel)}: two names for "
            "the same thing. Keep one of them."
        )


def _check_dropped(imodel: InterpretableModel, plan: EditPlan, seen: dict) -> None:
    for edit in plan.edits:
        if edit.op in ("pin", "rename") and edit.feature in plan.dropped:
            drop = seen[("drop", edit.feature)]
            raise EditError(
                f"{edit.describe(imodel)} conflicts with {drop.describe(imodel)}: a dropped "
                "feature cannot be pinned or named. Remove one of them."
            )
    for c, j in sorted(plan.pinned & plan.forbidden):  # a pin against a drop without refill
        raise EditError(
            f"{seen[('pin', (c, j))].describe(imodel)} conflicts with "
            f"{seen[('drop', j)].describe(imodel)}: a dropped feature cannot be pinned. "
            "Remove one of them."
        )
    if len(plan.dropped) >= imodel.n_features:
        raise EditError(f"the edits drop all {imodel.n_features} features; at least one must stay.")


def _check_counts(imodel: InterpretableModel, plan: EditPlan) -> None:
    """Per class: pins fit its count, enough allowed features remain, pinned sets stay unique."""
    counts = class_counts(imodel, plan)
    from retrofit.methods.base import method_traits

    refill = method_traits(imodel.config.method).refills_dropped
    usable = imodel.n_features - (0 if refill else len(plan.dropped))
    full: dict[frozenset[int], int] = {}
    for c, k in enumerate(counts):
        pins = sorted(j for cc, j in plan.pinned if cc == c)
        forbids = sorted(j for cc, j in plan.forbidden if cc == c)
        name = imodel.class_names[c]
        if len(pins) > k:
            raise EditError(
                f"class {name!r} gets {len(pins)} pinned links (features {pins}) but uses {k} "
                f"features: unpin {len(pins) - k} of them or raise its count with a per_class edit."
            )
        if usable - len(set(forbids) - plan.dropped) < k:
            raise EditError(
                f"class {name!r} needs {k} features but the edits forbid features {forbids}"
                + (f" and drop {sorted(plan.dropped)}" if plan.dropped and not refill else "")
                + f", leaving fewer than {k}: forbid fewer or lower its per_class count."
            )
        if refill and len(pins) == k:
            other = full.setdefault(frozenset(pins), c)
            if other != c:
                raise EditError(
                    f"the pins give classes {imodel.class_names[other]!r} and {name!r} the same "
                    f"features {pins}; QPM needs every class's feature set to be distinct. "
                    "Unpin one link of either class."
                )
    if refill and len(set(counts)) == 1:
        k = counts[0]
        if imodel.num_classes > math.comb(imodel.n_features, k):
            raise EditError(
                f"{imodel.num_classes} classes cannot have distinct sets of {k} features out "
                f"of {imodel.n_features}: change the per_class edits."
            )
