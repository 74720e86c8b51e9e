"""An OCSF event validator with the rules of the OCSF server's (ocsf-server `Schema.Validator2`).

Errors: unknown or wrong-typed `class_uid`; unknown profiles in `metadata.profiles`; missing required
attributes; unknown attributes (an attribute of a profile the event does not declare is unknown, as in
the server); wrong types (dictionary types and their supertypes, 32/64-bit integer ranges, arrays,
objects, recursively); values outside a type's range, max length or value list; enum values; `type_uid`
other than `class_uid * 100 + activity_id`; a `metadata.version` that is malformed or newer than the
schema; and the `at_least_one` / `just_one` constraints of classes and objects.
Warnings: deprecated classes, objects, attributes and enum values; an enum sibling (`activity_name`,
`type`, ...) that is not its value's caption; a string that misses its type's regex; another version.
Not checked (the server does not either, or we do not emit it): observables (and the `observable`
object's type_id enum, which the compiler generates), recommended attributes, extensions' attributes.
Cross-checked once against ocsf-lib 0.10.4's compile of 1.8.0: the same attributes, types, requirements
and enums everywhere; it differs only where it ignores `"profile": null` and a child's `constraints`,
which the OCSF server honours (`Map.merge` of the child over its parent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tests.ocsf.schema import Attrs, Item, Schema, load

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_VERSION = re.compile(r"^\d+\.\d+\.\d+(?:-dev|-rc\.\d+)?$")


@dataclass(frozen=True)
class Issue:
    severity: str  # "error" or "warning"
    code: str  # the server's code: attribute_required_missing, attribute_unknown, ...
    path: str  # attribute path in the event, e.g. actor.process.file.type_id
    message: str

    def __str__(self) -> str:
        return f"{self.severity} {self.code} at {self.path or '<event>'}: {self.message}"


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


class _Run:
    def __init__(self, schema: Schema, event: dict[str, Any]) -> None:
        self.schema = schema
        self.event = event
        self.issues: list[Issue] = []
        self.profiles: set[str] = set()

    def add(self, severity: str, code: str, path: str, message: str) -> None:
        self.issues.append(Issue(severity, code, path, message))

    def run(self) -> list[Issue]:
        cls = self.find_class()
        if cls is None:
            return self.issues
        self.read_profiles()
        if cls.deprecated:
            self.add("warning", "class_deprecated", "", f"class {cls.name} is deprecated")
        self.item(self.event, "", cls)
        self.version()
        self.type_uid()
        return self.issues

    def find_class(self) -> Item | None:
        uid = self.event.get("class_uid")
        if uid is None:
            self.add("error", "attribute_required_missing", "class_uid", "required attribute missing")
        elif not isinstance(uid, int) or isinstance(uid, bool):
            self.add("error", "attribute_wrong_type", "class_uid", f"expected integer_t, got {uid!r}")
        elif uid not in self.schema.classes:
            self.add("error", "class_uid_unknown", "class_uid", f"no class is defined for {uid}")
        else:
            return self.schema.classes[uid]
        return None

    def read_profiles(self) -> None:
        metadata = self.event.get("metadata")
        profiles = metadata.get("profiles") if isinstance(metadata, dict) else None
        if not isinstance(profiles, list):
            return  # absent, or a wrong type that the attribute check reports
        for i, name in enumerate(profiles):
            if isinstance(name, str) and name not in self.schema.profiles:
                self.add("error", "profile_unknown", f"metadata.profiles[{i}]", f"no profile {name!r}")
        self.profiles = {p for p in profiles if isinstance(p, str)}

    def visible(self, item: Item) -> Attrs:
        return {
            k: v
            for k, v in item.attributes.items()
            if v.get("profile") is None or v["profile"] in self.profiles
        }

    def item(self, value: dict[str, Any], path: str, item: Item) -> None:
        """An event or object against its class or object: attributes, unknown keys, enums, constraints."""
        attrs = self.visible(item)
        for name, attr in attrs.items():
            self.attribute(value.get(name), _join(path, name), attr)
        if attrs:  # an object without attributes (`object`: unmapped, xattributes) takes anything
            for key in value.keys() - attrs.keys():
                profile = item.attributes.get(key, {}).get("profile")
                why = f"; it belongs to profile {profile!r}, not in metadata.profiles" if profile else ""
                self.add("error", "attribute_unknown", _join(path, key), f"not defined in {item.name}{why}")
        for name, attr in attrs.items():
            if "enum" in attr and name in value:
                self.enum(value, path, name, attr)
        self.constraints(value, path, item)

    def attribute(self, value: Any, path: str, attr: dict[str, Any]) -> None:
        if value is None:
            if attr.get("requirement") == "required":
                self.add("error", "attribute_required_missing", path, "required attribute missing")
            return
        if "@deprecated" in attr:
            self.add("warning", "attribute_deprecated", path, str(attr["@deprecated"].get("message")))
        if not attr.get("is_array"):
            self.value(value, path, attr)
        elif not isinstance(value, list):
            self.add("error", "attribute_wrong_type", path, f"expected array, got {_type_name(value)}")
        else:
            for i, element in enumerate(value):
                self.value(element, f"{path}[{i}]", attr)

    def value(self, value: Any, path: str, attr: dict[str, Any]) -> None:
        type_name = attr["type"]
        if type_name in self.schema.types:
            self.typed(value, path, type_name)
        elif not isinstance(value, dict):
            self.add("error", "attribute_wrong_type", path, f"expected {type_name} object, got {value!r}")
        else:
            obj = self.schema.objects[type_name]
            if obj.deprecated:
                self.add("warning", "object_deprecated", path, f"object {obj.name} is deprecated")
            self.item(value, path, obj)

    def typed(self, value: Any, path: str, type_name: str) -> None:
        """A value against a dictionary type and, for a subtype, its supertype."""
        chain = [self.schema.types[type_name]]
        if "type" in chain[0]:
            chain.append(self.schema.types[chain[0]["type"]])
        primitive = chain[0].get("type", type_name)
        if not _is_primitive(value, primitive):
            self.add("error", "attribute_wrong_type", path, f"expected {type_name}, got {value!r}")
            return
        for t in chain:
            if "values" in t and value not in t["values"]:
                self.add("error", "attribute_value_not_in_type_values", path, f"{value!r} not allowed")
            if "range" in t and not t["range"][0] <= value <= t["range"][1]:
                self.add("error", "attribute_value_exceeds_range", path, f"{value} outside {t['range']}")
            if "max_len" in t and len(value) > t["max_len"]:
                self.add("error", "attribute_value_exceeds_max_len", path, f"longer than {t['max_len']}")
            if "regex" in t and not re.search(t["regex"], value):
                self.add("warning", "attribute_value_regex_not_matched", path, f"{value!r} vs {type_name}")

    def enum(self, value: dict[str, Any], path: str, name: str, attr: dict[str, Any]) -> None:
        values = value[name] if attr.get("is_array") and isinstance(value[name], list) else [value[name]]
        for v in values:
            key = str(v).lower() if isinstance(v, bool) else str(v)
            if key not in attr["enum"]:
                self.add("error", "attribute_enum_value_unknown", _join(path, name), f"{v!r} not in enum")
                continue
            if "@deprecated" in attr["enum"][key]:
                self.add("warning", "attribute_enum_value_deprecated", _join(path, name), f"{v!r}")
            sibling = attr.get("sibling")
            if not attr.get("is_array") and sibling in value:
                self.sibling(value[sibling], _join(path, sibling), v, attr["enum"][key]["caption"])

    def sibling(self, text: Any, path: str, enum_value: Any, caption: str) -> None:
        if enum_value == 99 and text == caption:
            self.add("warning", "attribute_enum_sibling_suspicious_other", path, f"{text!r} for 99")
        elif enum_value != 99 and text != caption:
            self.add("warning", "attribute_enum_sibling_incorrect", path, f"{text!r}, expected {caption!r}")

    def constraints(self, value: dict[str, Any], path: str, item: Item) -> None:
        for kind, keys in item.constraints.items():
            present = sum(k in value for k in keys)
            if kind == "at_least_one" and present == 0:
                self.add("error", "constraint_failed", path, f"{item.name} needs at least one of {keys}")
            elif kind == "just_one" and present != 1:
                self.add("error", "constraint_failed", path, f"{item.name} needs exactly one of {keys}")
            elif kind not in ("at_least_one", "just_one"):
                self.add("error", "constraint_unknown", path, f"{item.name}: unknown constraint {kind}")

    def version(self) -> None:
        metadata = self.event.get("metadata")
        version = metadata.get("version") if isinstance(metadata, dict) else None
        if not isinstance(version, str):
            return
        if not _VERSION.match(version):
            self.add("error", "version_invalid_format", "metadata.version", f"{version!r}")
        elif _semver(version) < (1, 0, 0) or _semver(version) > _semver(self.schema.version):
            self.add("error", "version_incompatible", "metadata.version", f"{version!r} is not released")
        elif version != self.schema.version:
            self.add("warning", "version_incorrect", "metadata.version", f"{version!r}, schema is newer")

    def type_uid(self) -> None:
        c, a, t = (self.event.get(k) for k in ("class_uid", "activity_id", "type_uid"))
        if all(isinstance(x, int) and not isinstance(x, bool) for x in (c, a, t)) and t != c * 100 + a:
            self.add("error", "type_uid_incorrect", "type_uid", f"{t}, expected {c * 100 + a}")


def _semver(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("-", maxsplit=1)[0].split("."))


def _is_primitive(value: Any, primitive: str) -> bool:
    if primitive in ("integer_t", "long_t"):
        lo, hi = _INT32 if primitive == "integer_t" else _INT64
        return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
    checks: dict[str, Any] = {"boolean_t": bool, "float_t": float, "string_t": str}
    return primitive == "json_t" or isinstance(value, checks[primitive])


def validate(event: dict[str, Any], schema: Schema | None = None) -> list[Issue]:
    """Every issue of one event (a decoded JSON object) against the schema, errors and warnings."""
    return _Run(schema or load(), event).run()


def problems(event: dict[str, Any]) -> list[str]:
    """The issues of an event as text lines, for assertions: an empty list means valid without warnings,
    both as the OCSF server compiles the schema and as ocsf-lib does (`"profile": null` ignored)."""
    server = [str(i) for i in validate(event)]
    other = [str(i) for i in validate(event, load(null_profile_resets=False))]
    return server + [f"{i} (as ocsf-lib compiles the schema)" for i in other if i not in server]
