"""The OCSF schema as the OCSF server compiles it, read from the schema repository's source files.

The release is read from `../shared/data/ocsf-schema-<version>` beside the checkout (never copied in).
Compiling follows the server: a file's `$include` list merges the included attributes under its own
(a profile's attributes carry `profile: <name>`, which a class or object may reset with `profile: null`);
`extends` merges the parent's resolved attributes under the child's (an attribute set to null is
removed); every attribute is merged over its `dictionary.json` entry (type, is_array, enum, sibling);
a child's `constraints` replace its parent's (`{}` removes them);
the Base Event is class 0 (category 0, Uncategorized), the other classes extend it; each `timestamp_t`
attribute gets a `<name>_dt` twin in the `datetime` profile; and a class's
`class_uid`, `category_uid` and `type_uid` enums hold only that class's values.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RELEASE = "1.8.0"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"

Attrs = dict[str, dict[str, Any]]


class SchemaError(Exception):
    """The schema repository is missing or cannot be compiled: names the file and what is wrong."""


@dataclass(frozen=True)
class Item:
    """A compiled class or object: its attributes and its constraints."""

    name: str
    caption: str
    attributes: Attrs
    constraints: dict[str, list[str]]
    uid: int | None = None  # class_uid, for classes only
    deprecated: dict[str, Any] | None = None


@dataclass(frozen=True)
class Schema:
    version: str
    types: dict[str, dict[str, Any]]
    classes: dict[int, Item]
    objects: dict[str, Item]
    profiles: frozenset[str]


def deep_merge(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """`right` over `left`, recursively for dicts; any other value of `right` (null too) wins."""
    out = dict(left)
    for key, value in right.items():
        old = out.get(key)
        out[key] = deep_merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return out


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SchemaError(f"{path}: cannot read schema file: {e}") from e
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: not a JSON object")
    return data


def _no_null_profile(attr: Any) -> Any:
    if not isinstance(attr, dict):  # the $include list
        return attr
    return {k: v for k, v in attr.items() if not (k == "profile" and v is None)}


class _Compiler:
    def __init__(self, root: Path, null_profile_resets: bool = True) -> None:
        if not (root / "version.json").is_file():
            raise SchemaError(f"{root}: no OCSF schema here (expected version.json); see shared/data")
        self.root = root
        self.null_profile_resets = null_profile_resets
        dictionary = _read(root / "dictionary.json")
        self.dictionary: Attrs = dictionary["attributes"]
        self.types: dict[str, dict[str, Any]] = dictionary["types"]["attributes"]
        self.categories = _read(root / "categories.json")["attributes"]
        self.raw_objects = {d["name"]: d for d in map(_read, sorted((root / "objects").glob("*.json")))}
        self.raw_classes = {d["name"]: d for d in map(_read, sorted((root / "events").rglob("*.json")))}
        self.profiles = frozenset(_read(p)["name"] for p in (root / "profiles").glob("*.json"))
        self._resolved: dict[tuple[str, str], tuple[Attrs, dict[str, list[str]]]] = {}

    def included(self, data: dict[str, Any]) -> Attrs:
        """A file's attributes with its `$include` files merged under them."""
        attrs = dict(data.get("attributes", {}))
        if not self.null_profile_resets:  # read as ocsf-lib does: `"profile": null` changes nothing
            attrs = {k: _no_null_profile(d) for k, d in attrs.items()}
        includes = attrs.pop("$include", [])
        for rel in [includes] if isinstance(includes, str) else includes:
            inc = _read(self.root / rel)
            inc_attrs = self.included(inc)
            if inc.get("meta") == "profile":
                inc_attrs = {k: {**v, "profile": inc["name"]} for k, v in inc_attrs.items()}
            attrs = deep_merge(inc_attrs, attrs)
        return attrs

    def resolve(self, kind: str, name: str) -> tuple[Attrs, dict[str, list[str]]]:
        """Attributes and constraints of a class or object, with everything it extends merged in."""
        key = (kind, name)
        if key not in self._resolved:
            raw = (self.raw_classes if kind == "class" else self.raw_objects).get(name)
            if raw is None:
                raise SchemaError(f"{self.root}: {kind} {name!r} is extended but not defined")
            attrs, constraints = self.included(raw), raw.get("constraints")
            if parent := raw.get("extends"):
                parent_attrs, parent_constraints = self.resolve(kind, parent)
                attrs = {k: v for k, v in deep_merge(parent_attrs, attrs).items() if v is not None}
                constraints = parent_constraints if constraints is None else constraints
            self._resolved[key] = (attrs, constraints or {})
        return self._resolved[key]

    def finish(self, owner: str, attrs: Attrs) -> Attrs:
        """Each attribute over its dictionary entry, plus the `_dt` twins of the timestamps."""
        out: Attrs = {}
        for name, attr in attrs.items():
            if name not in self.dictionary:
                raise SchemaError(f"{self.root}: {owner}.{name} is not in dictionary.json")
            full = deep_merge(self.dictionary[name], attr)
            out[name] = full
            if full.get("type") == "timestamp_t":
                out[f"{name}_dt"] = {"type": "datetime_t", "requirement": "optional", "profile": "datetime"}
        return out

    def item(self, kind: str, raw: dict[str, Any]) -> Item:
        attrs, constraints = self.resolve(kind, raw["name"])
        return Item(
            name=raw["name"],
            caption=raw.get("caption", raw["name"]),
            attributes=self.finish(raw["name"], attrs),
            constraints=constraints,
            deprecated=raw.get("@deprecated"),
        )

    def category(self, name: str) -> dict[str, Any]:
        raw = self.raw_classes[name]
        if "category" in raw:
            return self.categories.get(raw["category"], {"uid": 0, "caption": "Uncategorized"})
        return self.category(raw["extends"])

    def cls(self, raw: dict[str, Any]) -> Item:
        item = self.item("class", raw)
        cat = self.category(raw["name"])
        uid = cat["uid"] * 1000 + raw.get("uid", 0)  # base_event has none: it is class 0
        attrs = dict(item.attributes)
        attrs["class_uid"] = {**attrs["class_uid"], "enum": {str(uid): {"caption": item.caption}}}
        attrs["category_uid"] = {**attrs["category_uid"], "enum": {str(cat["uid"]): cat}}
        activities = attrs["activity_id"].get("enum", {})
        attrs["type_uid"] = {
            **attrs["type_uid"],
            "enum": {
                str(uid * 100 + int(a)): {"caption": f"{item.caption}: {v['caption']}"}
                for a, v in activities.items()
            },
        }
        return Item(item.name, item.caption, attrs, item.constraints, uid, item.deprecated)

    def compile(self) -> Schema:
        concrete = [raw for raw in self.raw_classes.values() if "uid" in raw or raw["name"] == "base_event"]
        classes = [self.cls(raw) for raw in concrete]
        return Schema(
            version=_read(self.root / "version.json")["version"],
            types=self.types,
            classes={c.uid: c for c in classes if c.uid is not None},
            objects={name: self.item("object", raw) for name, raw in self.raw_objects.items()},
            profiles=self.profiles,
        )


@functools.cache
def load(release: str = RELEASE, *, null_profile_resets: bool = True) -> Schema:
    """The compiled schema of an OCSF release from shared/data (cached). `null_profile_resets=False`
    compiles it as ocsf-lib does, where a class's `"profile": null` leaves the attribute in its profile
    (a stricter reading than the server's, which events that must pass both validators meet too)."""
    return _Compiler(SHARED / f"ocsf-schema-{release}", null_profile_resets).compile()
