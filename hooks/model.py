"""The versioned assessment model: value sets, weights, thresholds and citations.

The model file ships in the package (``hooks/data/spine-knee-model.yaml``). A site adds local codes,
its referral code and its spine service through a ``site`` mapping; the effective model's content
hash covers both, so every assessment names exactly what produced it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

MODEL_FILE = "spine-knee-model.yaml"

EvidenceGrade = Literal["strong", "moderate", "weak", "hypothesis", "expert"]
SignalKind = Literal["finding", "alternative"]
GroupRule = Literal["strongest", "cap", "sum"]
# how an examination Observation counts as positive: a grade below normal, a positive or a reduced result
PositiveWhen = Literal["below_normal_grade", "positive", "reduced"]

# Value-set fields that name a code system family; `other` maps full system URIs to codes.
_FAMILY_FIELDS = ("icd10cm", "snomed", "loinc", "cpt")


class ModelConfigError(ValueError):
    """The model file or a site's configuration of it is not usable."""


def normalize_code(family: str, code: str) -> str:
    code = code.strip()
    if family == "icd10cm":
        # ICD-10-CM arrives with and without the dot (M25.561 / M25561)
        return code.replace(".", "").upper()
    return code


@dataclass(frozen=True, slots=True)
class Coding:
    system: str
    code: str
    display: str | None = None

    def as_fhir(self) -> dict[str, str]:
        out = {"system": self.system, "code": self.code}
        if self.display:
            out["display"] = self.display
        return out


@dataclass(frozen=True, slots=True)
class Ratio:
    measure: str
    value: float
    ci: str | None = None

    def __str__(self) -> str:
        return f"{self.measure} {self.value:g}" + (f" ({self.ci})" if self.ci else "")


@dataclass(frozen=True, slots=True)
class ValueSet:
    key: str
    label: str
    sources: tuple[str, ...]
    laterality: Mapping[str, str] = field(default_factory=dict)
    positive_when: PositiveWhen | None = None


@dataclass(frozen=True, slots=True)
class Group:
    """Signals that describe one episode: `strongest` counts only the strongest that fires, `cap` limits
    their sum, `sum` adds them all; `superseded_by` groups, once fired, make this one add nothing."""

    key: str
    rule: GroupRule
    cap: float | None = None
    superseded_by: tuple[str, ...] = ()
    caption: str | None = None


@dataclass(frozen=True, slots=True)
class Signal:
    key: str
    kind: SignalKind
    label: str
    weight: float
    evidence: EvidenceGrade
    sources: tuple[str, ...]
    why: str
    group: str
    value_sets: tuple[str, ...] = ()
    requires_all: tuple[str, ...] = ()
    requires_any: tuple[str, ...] = ()
    # a counted `spinal` signal opens the `possible` gate, a `mid_lumbar` one the `likely` gate
    spinal: bool = False
    mid_lumbar: bool = False
    resolved_counts_within_days: int | None = None
    ratio: Ratio | None = None
    advice: str | None = None


@dataclass(frozen=True, slots=True)
class ExpectedInput:
    key: str
    label: str
    value_sets: tuple[str, ...]


class CodeIndex:
    """Maps (system, code) to the value sets that contain it, in O(code length)."""

    def __init__(self, system_families: Mapping[str, str]) -> None:
        self._families = dict(system_families)
        self._exact: dict[tuple[str, str], set[str]] = {}
        self._prefixes: dict[tuple[str, str], set[str]] = {}
        self._prefix_lengths: set[int] = set()
        self._memo: dict[tuple[str | None, str | None], frozenset[str]] = {}

    def family(self, system: str) -> str:
        return self._families.get(system, system)

    def add(self, value_set: str, system: str, code: str, *, prefix: bool = False) -> None:
        family = self.family(system)
        key = (family, normalize_code(family, code))
        if prefix:
            self._prefixes.setdefault(key, set()).add(value_set)
            self._prefix_lengths.add(len(key[1]))
        else:
            self._exact.setdefault(key, set()).add(value_set)

    def lookup(self, system: str | None, code: str | None) -> frozenset[str]:
        # raw JSON can hold anything here; a list or mapping must not reach the memo (unhashable)
        if not isinstance(system, str) or not isinstance(code, str) or not code:
            return frozenset()
        memo_key = (system, code)
        hit = self._memo.get(memo_key)
        if hit is not None:
            return hit
        found: set[str] = set()
        family = self.family(system)
        normalized = normalize_code(family, code)
        found.update(self._exact.get((family, normalized), ()))
        for length in self._prefix_lengths:
            if length <= len(normalized):
                found.update(self._prefixes.get((family, normalized[:length]), ()))
        result = frozenset(found)
        if len(self._memo) < 100_000:
            self._memo[memo_key] = result
        return result

    def codes_for(self, value_set: str) -> list[tuple[str, str]]:
        return sorted(k for k, v in self._exact.items() if value_set in v)


@dataclass(frozen=True)
class Referral:
    code: Coding
    performer_type: Coding | None
    text: str = "Lumbar spine evaluation"
    priority: str = "routine"
    category: Coding | None = None


@dataclass(frozen=True)
class Model:
    id: str
    version: str
    hash: str
    title: str
    document: Mapping[str, Any]
    bands: Mapping[str, float]
    value_sets: Mapping[str, ValueSet]
    signals: Mapping[str, Signal]
    groups: Mapping[str, Group]
    expected_inputs: tuple[ExpectedInput, ...]
    index: CodeIndex
    referral: Referral
    citations: Mapping[str, str]
    short_citations: Mapping[str, str]

    @property
    def eligibility(self) -> Mapping[str, Any]:
        return self._section("eligibility")

    @property
    def suppression(self) -> Mapping[str, Any]:
        return self._section("suppression")

    @property
    def condition_rules(self) -> Mapping[str, Any]:
        return self._section("condition_rules")

    @property
    def detail(self) -> Mapping[str, Any]:
        return self._section("detail")

    @property
    def gates(self) -> Mapping[str, str]:
        return self._section("gates")

    @property
    def changelog(self) -> list[Mapping[str, Any]]:
        return list(self.document.get("changelog") or [])

    def _section(self, name: str) -> Mapping[str, Any]:
        section = self.document[name]
        if not isinstance(section, Mapping):
            raise ModelConfigError(f"{name}: expected a mapping")
        return section

    @property
    def strength_grade_normal(self) -> float:
        return float(self.document["strength_grade_normal"])

    def cite(self, keys: tuple[str, ...]) -> list[str]:
        return [self.citations[k] for k in keys]

    def identity(self) -> dict[str, str]:
        return {"id": self.id, "version": self.version, "hash": self.hash}


def _coding(raw: Any, where: str) -> Coding:
    if not isinstance(raw, Mapping) or not raw.get("system") or not raw.get("code"):
        raise ModelConfigError(f"{where}: expected a coding with 'system' and 'code'")
    return Coding(str(raw["system"]), str(raw["code"]), raw.get("display"))


def _apply_site(document: dict[str, Any], site: Mapping[str, Any]) -> None:
    """Merge a site's configuration into the model document, naming any key it cannot use."""
    known = {"codes", "referral", "suppression_days"}
    unknown = set(site) - known
    if unknown:
        raise ModelConfigError(f"site configuration: unknown key(s) {sorted(unknown)}; use {sorted(known)}")
    codes = site.get("codes") or {}
    if not isinstance(codes, Mapping):
        raise ModelConfigError("site configuration codes: expected a mapping of value set to codings")
    for value_set, codings in codes.items():
        if value_set not in document["value_sets"]:
            raise ModelConfigError(f"site configuration codes.{value_set}: no such value set")
        if not isinstance(codings, list):
            raise ModelConfigError(f"site configuration codes.{value_set}: expected a list of codings")
        other = document["value_sets"][value_set].setdefault("other", {})
        for i, raw in enumerate(codings):
            coding = _coding(raw, f"site configuration codes.{value_set}[{i}]")
            other.setdefault(coding.system, []).append(coding.code)
    if "referral" in site:
        referral = site["referral"]
        if not isinstance(referral, Mapping) or set(referral) - {"code", "performer_type"}:
            raise ModelConfigError("site configuration referral: expected {'code', 'performer_type'}")
        if "code" in referral:
            own = _coding(referral["code"], "site configuration referral.code")
            document["referral"]["code"] = dict(own.as_fhir())
            # the site's own referral is a spine referral wherever it appears: once ordered, it silences the cards
            document["value_sets"]["spine_referral"].setdefault("other", {}).setdefault(own.system, []).append(own.code)
        if "performer_type" in referral:
            performer = _coding(referral["performer_type"], "site configuration referral.performer_type")
            document["referral"]["performer_type"] = performer.as_fhir()
    if "suppression_days" in site:
        days = site["suppression_days"]
        if not isinstance(days, int) or isinstance(days, bool) or days < 0:
            raise ModelConfigError("site configuration suppression_days: expected a whole number of days >= 0")
        document["suppression"]["completed_within_days"] = days


def content_hash(document: Mapping[str, Any]) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _build(document: dict[str, Any]) -> Model:
    families = {uri: family for family, uris in document["systems"].items() for uri in uris}
    index = CodeIndex(families)
    citations = {key: " ".join(str(c["text"]).split()) for key, c in document["citations"].items()}
    short_citations = {key: str(c.get("short") or key) for key, c in document["citations"].items()}
    value_sets: dict[str, ValueSet] = {}
    for key, raw in document["value_sets"].items():
        for src in raw.get("sources", []):
            if src not in citations:
                raise ModelConfigError(f"value_sets.{key}: unknown citation {src!r}")
        canonical = {fam: document["systems"][fam][0] for fam in _FAMILY_FIELDS}
        for fam in _FAMILY_FIELDS:
            for code in raw.get(fam, []):
                index.add(key, canonical[fam], str(code))
            for code in raw.get(f"{fam}_prefixes", []):
                index.add(key, canonical[fam], str(code), prefix=True)
        for system, codes in (raw.get("other") or {}).items():
            for code in codes:
                index.add(key, system, str(code))
        laterality = {normalize_code("icd10cm", str(c)): side for c, side in (raw.get("laterality") or {}).items()}
        positive_when = raw.get("positive_when")
        if positive_when not in (None, "below_normal_grade", "positive", "reduced"):
            raise ModelConfigError(f"value_sets.{key}.positive_when: unknown rule {positive_when!r}")
        value_sets[key] = ValueSet(key, raw["label"], tuple(raw.get("sources", [])), laterality, positive_when)

    groups: dict[str, Group] = {}
    for key, raw in (document.get("groups") or {}).items():
        if raw.get("rule") not in ("strongest", "cap", "sum") or (raw["rule"] == "cap") != ("cap" in raw):
            raise ModelConfigError(f"groups.{key}: rule must be strongest, sum, or cap with a `cap`")
        groups[key] = Group(
            key,
            raw["rule"],
            float(raw["cap"]) if "cap" in raw else None,
            tuple(raw.get("superseded_by", [])),
            raw.get("caption"),
        )
    for group in groups.values():
        for other in group.superseded_by:
            if other not in groups:
                raise ModelConfigError(f"groups.{group.key}.superseded_by: unknown group {other!r}")

    signals: dict[str, Signal] = {}
    for key, raw in document["signals"].items():
        for ref in [*raw.get("value_sets", []), *raw.get("requires_all", []), *raw.get("requires_any", [])]:
            if ref not in value_sets and ref not in document["signals"]:
                raise ModelConfigError(f"signals.{key}: unknown value set or signal {ref!r}")
        for src in raw["sources"]:
            if src not in citations:
                raise ModelConfigError(f"signals.{key}: unknown citation {src!r}")
        if raw.get("group") not in groups:
            raise ModelConfigError(f"signals.{key}: unknown group {raw.get('group')!r}")
        ratio = raw.get("ratio")
        signals[key] = Signal(
            key=key,
            kind=raw["kind"],
            label=raw["label"],
            weight=float(raw["weight"]),
            evidence=raw["evidence"],
            sources=tuple(raw["sources"]),
            why=" ".join(str(raw["why"]).split()),
            group=str(raw["group"]),
            value_sets=tuple(raw.get("value_sets", [])),
            requires_all=tuple(raw.get("requires_all", [])),
            requires_any=tuple(raw.get("requires_any", [])),
            spinal=bool(raw.get("spinal", False)),
            mid_lumbar=bool(raw.get("mid_lumbar", False)),
            resolved_counts_within_days=raw.get("resolved_counts_within_days"),
            ratio=Ratio(ratio["measure"], float(ratio["value"]), ratio.get("ci")) if ratio else None,
            advice=" ".join(str(raw["advice"]).split()) if raw.get("advice") else None,
        )
    expected = tuple(
        ExpectedInput(key, raw["label"], tuple(raw["value_sets"])) for key, raw in document["expected_inputs"].items()
    )
    referral_raw = document["referral"]
    referral = Referral(
        code=_coding(referral_raw["code"], "referral.code"),
        performer_type=_coding(referral_raw["performer_type"], "referral.performer_type")
        if referral_raw.get("performer_type")
        else None,
        text=str(referral_raw.get("text") or "Lumbar spine evaluation"),
        priority=str(referral_raw.get("priority") or "routine"),
        category=_coding(referral_raw["category"], "referral.category") if referral_raw.get("category") else None,
    )
    if referral.priority not in ("routine", "urgent", "asap", "stat"):
        raise ModelConfigError("referral.priority: expected routine, urgent, asap or stat")
    bands = {k: float(v) for k, v in document["bands"].items()}
    if "possible" not in bands or "likely" not in bands or not bands["possible"] < bands["likely"]:
        raise ModelConfigError("bands: 'possible' must be below 'likely'")
    return Model(
        id=str(document["id"]),
        version=str(document["version"]),
        hash=content_hash(document),
        title=str(document["title"]),
        document=document,
        bands=bands,
        value_sets=value_sets,
        signals=signals,
        groups=groups,
        expected_inputs=expected,
        index=index,
        referral=referral,
        citations=citations,
        short_citations=short_citations,
    )


@lru_cache(maxsize=4)
def _base_document(path: str | None) -> dict[str, Any]:
    if path is None:
        text = resources.files("hooks").joinpath("data", MODEL_FILE).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise ModelConfigError(f"{path or MODEL_FILE}: not a mapping")
    return document


@lru_cache(maxsize=16)
def _load_cached(path: str | None, site_json: str) -> Model:
    document = copy.deepcopy(_base_document(path))
    site = json.loads(site_json)
    if site:
        _apply_site(document, site)
    return _build(document)


def load_model(site: Mapping[str, Any] | None = None, path: str | Path | None = None) -> Model:
    """The effective model: the shipped (or given) model file with a site's configuration applied."""
    if site is not None and not isinstance(site, Mapping):
        raise ModelConfigError("site configuration: expected a mapping")
    site_json = json.dumps(site or {}, sort_keys=True)
    return _load_cached(str(path) if path is not None else None, site_json)
