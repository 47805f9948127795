"""The policy engine: one pure function decides whether an action on some data may happen at a site.

``evaluate(action, subject, site, origin=None, rules=...)`` reads no global state, writes nothing and returns a
:class:`Decision` that carries the rule and a sentence saying why. The planner, the transfer engine, the registry
and the gateway all ask it; the caller writes the decision to the audit log.

Rules are read in order and the first whose ``match`` fits the subject governs; :data:`DEFAULT_RULES` follow the
workspace's own rules, so with no rules at all:

- ``pii`` and ``phi`` data is stored, processed and replicated only within its origin jurisdiction, models derived
  from it stay there too, and a request is served only in the requester's own jurisdiction
  (rule ``default-personal-data-residency``);
- everything else may go anywhere (rule ``default-open``).

Actions: ``store`` (data at rest at the site), ``process`` (a job reads it there), ``replicate`` (a copy at the
site: ``store`` plus the encryption requirement), ``derive_export`` (a model or checkpoint derived from the data goes
to the site), ``serve`` (a request from jurisdiction ``origin`` is answered at the site by a model derived from the
data), ``aggregate_export`` (statistics computed at the site leave it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from archipel.models.policy import ACTIONS, PolicyRule, RuleMatch, SiteSelector
from archipel.models.site import SiteSpec
from archipel.policy.jurisdiction import within

__all__ = ["DEFAULT_RULES", "Decision", "Place", "Subject", "evaluate", "governing_rule"]

DEFAULT_RULES: tuple[PolicyRule, ...] = (
    PolicyRule(
        name="default-personal-data-residency",
        description="Personal and health data stays in the jurisdiction it comes from (GDPR, HIPAA, ...).",
        match=RuleMatch(classifications=["pii", "phi"]),
        store=SiteSelector(jurisdictions=["origin"]),
        process=SiteSelector(jurisdictions=["origin"]),
        derive_export=SiteSelector(jurisdictions=["origin"]),
        serve=SiteSelector(jurisdictions=["requester"]),
    ),
    PolicyRule(name="default-open", description="Data that is not personal may go anywhere."),
)


@dataclass(frozen=True)
class Subject:
    """The data an action touches: a dataset, or a model/checkpoint/sample set that inherits its rules."""

    kind: str
    name: str
    classification: str
    jurisdiction: str
    """Origin jurisdiction of the data (for a model: of the data it was trained on)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    datasets: tuple[str, ...] = ()
    """The datasets this subject is or derives from (a dataset lists itself)."""

    def describe(self) -> str:
        return f"{self.kind} {self.name} ({self.classification}, from {self.jurisdiction})"


@dataclass(frozen=True)
class Place:
    """What the engine needs to know about a site."""

    name: str
    provider: str
    jurisdiction: str
    labels: Mapping[str, str] = field(default_factory=dict)
    has_key: bool = False
    """Whether the site has a data key for encryption at rest."""

    @classmethod
    def of(cls, name: str, site: SiteSpec) -> Place:
        return cls(name, site.provider, site.jurisdiction, dict(site.labels), site.encryption is not None)

    def describe(self) -> str:
        return f"{self.name} ({self.provider}, {self.jurisdiction})"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    action: str
    subject: str
    site: str
    rule: str
    reason: str
    origin: str | None = None
    encrypt: bool = False
    """The data must be stored sealed at this site (the rule asks for encryption at rest)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "action": self.action,
            "subject": self.subject,
            "site": self.site,
            "origin": self.origin,
            "rule": self.rule,
            "reason": self.reason,
            "encrypt": self.encrypt,
        }


def _matches(match: RuleMatch, subject: Subject) -> bool:
    if match.classifications is not None and subject.classification not in match.classifications:
        return False
    if match.jurisdictions is not None and not any(
        within(subject.jurisdiction, j) for j in match.jurisdictions
    ):
        return False
    if match.datasets is not None and not set(subject.datasets) & set(match.datasets):
        return False
    return all(subject.labels.get(k) == v for k, v in match.labels.items())


def governing_rule(subject: Subject, rules: Sequence[PolicyRule] = ()) -> PolicyRule:
    """The first of ``rules`` then :data:`DEFAULT_RULES` whose match fits ``subject``."""
    for rule in (*rules, *DEFAULT_RULES):
        if _matches(rule.match, subject):
            return rule
    raise AssertionError("default-open matches everything")  # pragma: no cover


def _jurisdictions(selector: SiteSelector, subject: Subject, origin: str | None) -> list[str] | None:
    """The selector's jurisdictions with ``origin``/``requester`` resolved; None when any is unresolvable."""
    resolved = []
    for code in selector.jurisdictions or []:
        if code == "origin":
            resolved.append(subject.jurisdiction)
        elif code == "requester":
            if origin is None:
                return None
            resolved.append(origin)
        else:
            resolved.append(code)
    return resolved


def _unmet(selector: SiteSelector, subject: Subject, place: Place, origin: str | None) -> str | None:
    """Why ``place`` fails ``selector`` (None when it satisfies every condition)."""
    if selector.jurisdictions is not None:
        allowed = _jurisdictions(selector, subject, origin)
        if allowed is None:
            return "the request's origin jurisdiction is unknown"
        if not any(within(place.jurisdiction, j) for j in allowed):
            areas = ", ".join(dict.fromkeys(allowed))
            return f"only sites in {areas} are allowed; {place.name} is in {place.jurisdiction}"
    if selector.providers is not None and place.provider not in selector.providers:
        return f"only providers {', '.join(selector.providers)} are allowed; {place.name} is {place.provider}"
    if selector.sites is not None and place.name not in selector.sites:
        return f"only sites {', '.join(selector.sites)} are allowed"
    for key, value in selector.labels.items():
        if place.labels.get(key) != value:
            return f"sites must carry label {key}={value}; {place.name} does not"
    return None


_VERB = {
    "store": "be stored at",
    "process": "be processed at",
    "replicate": "be replicated to",
    "derive_export": "have derived models sent to",
    "serve": "answer requests at",
    "aggregate_export": "export statistics from",
}


def evaluate(
    action: str, subject: Subject, site: Place, origin: str | None = None, *, rules: Iterable[PolicyRule] = ()
) -> Decision:
    """Decide ``action`` on ``subject`` at ``site``; ``origin`` is the requester's jurisdiction for ``serve``."""
    if action not in ACTIONS:
        raise ValueError(f"unknown policy action {action!r}; actions: {', '.join(ACTIONS)}")
    rule = governing_rule(subject, tuple(rules))
    what = subject.describe()
    verb = _VERB[action] if action != "serve" else f"answer requests from {origin or 'an unknown origin'} at"

    def decide(allowed: bool, why: str) -> Decision:
        sentence = f"{what} may {'' if allowed else 'not '}{verb} {site.describe()}: {why} (rule {rule.name})"
        return Decision(
            allowed, action, subject.name, site.name, rule.name, sentence, origin, rule.encrypt_at_rest
        )

    if action == "aggregate_export":
        return decide(
            rule.aggregate_export, "aggregates may leave" if rule.aggregate_export else "aggregates stay"
        )
    permission = getattr(rule, "store" if action == "replicate" else action)
    if permission is False:
        return decide(False, f"the rule forbids {action.replace('_', ' ')} anywhere")
    if isinstance(permission, SiteSelector):
        problem = _unmet(permission, subject, site, origin)
        if problem:
            return decide(False, problem)
    if action in ("store", "replicate") and rule.encrypt_at_rest and not site.has_key:
        return decide(
            False, f"the rule requires encryption at rest and {site.name} has no data key (encryption:)"
        )
    return decide(
        True, "the site satisfies the rule" + (", sealed with the site's key" if rule.encrypt_at_rest else "")
    )
