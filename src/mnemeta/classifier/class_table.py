"""The class table of a few-shot classifier: which classes exist, under which names.

Kept as one JSON value in the store's application state (``app:classifier`` in tasks.sqlite's
meta table) and changed only inside a write transaction, so that processes adding at once see
each other's classes. Examples are records of the task memory and are never rewritten: each names
its class by a stable id (``uid``), so renaming a class changes one entry here and removing it
marks the entry removed; its examples stay in the store's history, ignored.

Pure functions of the state: the transactions that apply them are the classifier's.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from mnemeta.errors import DataError

FORMAT = 1
KEY = "classifier"


def new_state(encoder: dict[str, Any], spec: str, *, use_names: bool) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "encoder": encoder,
        "encoder_spec": spec,
        "use_names": use_names,
        "classes": {},
        "threshold": None,
        "head": None,
        "revision": 0,
    }


def check_label(label: Any, where: str) -> str:
    """A label as it will be stored: a non-empty string without surrounding blanks."""
    if not isinstance(label, str):
        raise DataError(f"{where}: the label {label!r} is not a string; labels are text")
    name = label.strip()
    if not name:
        raise DataError(f"{where}: the label is empty; give every example a class name")
    return name


def live(state: dict[str, Any]) -> dict[str, str]:
    """``{uid: name}`` of the classes not removed, in creation order."""
    # The state is stored as JSON with sorted keys: the creation time gives the order back.
    made = sorted(state["classes"].items(), key=lambda kv: (kv[1]["created"], kv[0]))
    return {uid: c["name"] for uid, c in made if not c["removed"]}


def by_name(state: dict[str, Any]) -> dict[str, str]:
    """``{name: uid}`` of the classes not removed."""
    return {c["name"]: uid for uid, c in state["classes"].items() if not c["removed"]}


def uid_of(state: dict[str, Any], name: str) -> str | None:
    return by_name(state).get(name)


def require(state: dict[str, Any], name: str) -> str:
    uid = uid_of(state, name)
    if uid is None:
        names = sorted(live(state).values())
        shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
        raise DataError(
            f"no class {name!r} in this classifier (it has {len(names)}: {shown or 'none'}); "
            "see `mnemeta classes list`"
        )
    return uid


def with_classes(state: dict[str, Any], names: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The state with a class for every name it lacks; and ``{name: uid}`` for all ``names``."""
    state = {**state, "classes": dict(state["classes"])}
    known = by_name(state)
    uids: dict[str, str] = {}
    for name in names:
        uid = known.get(name)
        if uid is None:
            uid = uuid.uuid4().hex[:12]
            state["classes"][uid] = {"name": name, "removed": False, "created": time.time()}
        uids[name] = uid
    return bump(state), uids


def renamed(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    uid = require(state, old)
    if old == new:
        return state
    if uid_of(state, new) is not None:
        raise DataError(f"there is already a class {new!r}; remove it first or choose another name")
    state = {**state, "classes": dict(state["classes"])}
    state["classes"][uid] = {**state["classes"][uid], "name": new}
    return bump(state)


def removed(state: dict[str, Any], name: str) -> dict[str, Any]:
    uid = require(state, name)
    state = {**state, "classes": dict(state["classes"])}
    state["classes"][uid] = {**state["classes"][uid], "removed": True, "removed_at": time.time()}
    return bump(state)


def bump(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "revision": int(state["revision"]) + 1}
