"""Service declarations, discovery, and the order hooks' knee-directed order detection."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from hooks.assessment import Assessor
from hooks.cards import CardOptions
from hooks.fhir import read_orders
from hooks.model import Model, load_model
from hooks.services import DEFAULT_ENABLED, REQUIRED_CONTEXT, SERVICES, SERVICES_BY_ID, Catalog, default_prefetch, evaluate
from hooks.synthetic import ICD10, LOINC, SNOMED, Factory, Resource, generate, searchset
from tests.hooks.conftest import CPT, DOCS_URL, HookCall, chest_xray_order, knee_mri_order

OrderFactory = Callable[[Factory], Resource]
HookRequest = Callable[..., HookCall]


# -- drafted orders --------------------------------------------------------------------------------


def _draft(system: str, code: str, display: str, **kw: Any) -> OrderFactory:
    extra: Resource = kw.pop("extra", {})

    def make(f: Factory) -> Resource:
        draft: Resource = f.service_request(system, code, display, status="draft", days_ago=0, **kw)
        return draft | extra

    make.__name__ = display
    return make


KNEE_ORDERS: dict[str, OrderFactory] = {
    "knee-mri-snomed": _draft(SNOMED, "241641004", "MRI of knee"),
    "knee-mri-loinc": _draft(LOINC, "24802-1", "MR Knee"),
    "knee-xray-cpt": _draft(CPT, "73560", "Radiologic examination, knee; 1 or 2 views"),
    "knee-arthroscopy-cpt": _draft(CPT, "29881", "Arthroscopy, knee, surgical; with meniscectomy"),
    "tkr-snomed": _draft(SNOMED, "609588000", "Total knee replacement"),
    "tkr-cpt": _draft(CPT, "27447", "Arthroplasty, knee"),
    "knee-injection": _draft(CPT, "20610", "Arthrocentesis, major joint", body_site=("72696002", "Knee region structure")),
    "knee-joint-injection": _draft(CPT, "20610", "Arthrocentesis, major joint", body_site=("49076000", "Knee joint structure")),
    "knee-oa-referral": _draft(
        SNOMED,
        "308481009",
        "Referral to orthopedic surgeon",
        extra={"reasonCode": [{"coding": [{"system": ICD10, "code": "M17.11", "display": "Primary OA, right knee"}]}]},
    ),
    "knee-site-referral": _draft(
        SNOMED, "308481009", "Referral to orthopedic surgeon", body_site=("72696002", "Knee region structure")
    ),
}


def _medication(f: Factory) -> Resource:
    return {
        "resourceType": "MedicationRequest",
        "id": f.new_id(),
        "status": "draft",
        "intent": "order",
        "subject": f.subject,
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197806", "display": "Ibuprofen 600 MG"}]
        },
    }


OTHER_ORDERS: dict[str, OrderFactory] = {
    "chest-xray": chest_xray_order,
    "shoulder-injection": _draft(
        CPT, "20610", "Arthrocentesis, major joint", body_site=("16982005", "Shoulder region structure")
    ),
    "injection-no-site": _draft(CPT, "20610", "Arthrocentesis, major joint"),
    "plain-referral": _draft(SNOMED, "308481009", "Referral to orthopedic surgeon"),
    "spine-referral-drafted": _draft(SNOMED, "308482002", "Referral to neurosurgeon"),
    "lumbar-mri": _draft(LOINC, "24968-0", "MR Lumbar spine"),
    "medication": _medication,
}


def knee_orders_of(model: Model, today: date, drafts: list[Resource]) -> list[str]:
    orders, _ = read_orders(model, searchset(drafts))
    assessor = Assessor(model)
    return [o.reference for o in orders if assessor.is_knee_directed(o)]


# -- declarations and discovery --------------------------------------------------------------------


class TestDeclarations:
    def test_ids_unique(self) -> None:
        ids = [s.id for s in SERVICES]
        assert len(ids) == len(set(ids))
        assert set(SERVICES_BY_ID) == set(ids)
        assert all(re.fullmatch(r"[a-z0-9-]+", i) for i in ids)

    def test_hooks(self) -> None:
        assert sorted(s.hook for s in SERVICES) == [
            "appointment-book",
            "encounter-start",
            "order-select",
            "order-sign",
            "patient-view",
            "problem-list-item-create",
        ]
        assert set(REQUIRED_CONTEXT) == {s.hook for s in SERVICES}
        # the newer trigger points are for a site to turn on
        assert sorted(SERVICES_BY_ID[i].hook for i in DEFAULT_ENABLED) == ["order-select", "order-sign", "patient-view"]

    @pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.id)
    def test_discovery(self, service: Any, model: Model) -> None:
        templates = default_prefetch(model)
        out = service.discovery(templates)
        assert {"hook", "id", "title", "description", "prefetch"} <= set(out)
        assert out["hook"] == service.hook and out["id"] == service.id
        assert isinstance(out["title"], str) and out["title"]
        assert isinstance(out["description"], str) and out["description"]
        assert set(out["prefetch"]) == {
            "patient",
            "conditions",
            "observations",
            "examObservations",
            "procedures",
            "serviceRequests",
        }
        for template in out["prefetch"].values():
            assert "{{context.patientId}}" in template
        assert out["prefetch"]["patient"] == "Patient/{{context.patientId}}"
        for key, resource_type in [
            ("conditions", "Condition"),
            ("procedures", "Procedure"),
            ("serviceRequests", "ServiceRequest"),
        ]:
            assert out["prefetch"][key] == f"{resource_type}?patient={{{{context.patientId}}}}&_count=100"
        assert all(v not in (None, "", [], {}) for v in out.values())
        orjson.dumps(out)

    def test_observation_searches_name_a_code_or_a_category(self, model: Model) -> None:
        """US Core and Epic refuse an Observation search by patient alone."""
        templates = default_prefetch(model)
        observation_searches = [t for t in templates.values() if t.startswith("Observation?")]
        assert len(observation_searches) == 2
        for template in observation_searches:
            assert "&code=" in template or "&category=" in template
            assert "&_count=" in template
        assert "http://loinc.org|72514-3" in templates["observations"]  # pain severity
        assert templates["examObservations"].endswith("category=exam&_count=100")

    def test_site_codes_join_the_observation_search(self) -> None:
        site = {"codes": {"femoral_stretch_exam": [{"system": "http://example.org/site-codes", "code": "FNST"}]}}
        templates = default_prefetch(load_model(site=site))
        assert "http://example.org/site-codes|FNST" in templates["observations"]

    def test_a_site_replaces_or_drops_a_template(self, model: Model) -> None:
        catalog = Catalog.build(
            model,
            DEFAULT_ENABLED,
            {"conditions": "Condition?patient={{context.patientId}}&category=problem-list-item", "examObservations": None},
        )
        assert catalog.prefetch["conditions"].endswith("category=problem-list-item")
        assert "examObservations" not in catalog.prefetch
        assert all(s["prefetch"] == catalog.prefetch for s in catalog.discovery())

    def test_discovery_lists_only_enabled_services(self, model: Model) -> None:
        assert [s["id"] for s in Catalog.build(model).discovery()] == list(DEFAULT_ENABLED)
        chosen = Catalog.build(model, ["spine-knee-encounter-start", "spine-knee-order-sign"])
        assert [s["hook"] for s in chosen.discovery()] == ["order-sign", "encounter-start"]
        assert chosen.get("spine-knee-patient-view") is None

    def test_required_context(self) -> None:
        assert REQUIRED_CONTEXT["order-select"] == ("userId", "patientId", "selections", "draftOrders")
        assert REQUIRED_CONTEXT["order-sign"] == ("userId", "patientId", "draftOrders")
        assert REQUIRED_CONTEXT["patient-view"] == ("userId", "patientId")
        assert REQUIRED_CONTEXT["encounter-start"] == ("userId", "patientId", "encounterId")
        assert REQUIRED_CONTEXT["problem-list-item-create"] == ("userId", "patientId", "conditions")
        assert REQUIRED_CONTEXT["appointment-book"] == ("userId", "patientId", "appointments")


# -- knee-directed orders --------------------------------------------------------------------------


@pytest.mark.parametrize("name", KNEE_ORDERS)
def test_knee_directed_orders_detected(model: Model, today: date, name: str) -> None:
    draft = KNEE_ORDERS[name](Factory(seed=1, today=today))
    assert knee_orders_of(model, today, [draft]) == [f"ServiceRequest/{draft['id']}"]


def test_knee_procedure_order_detected(model: Model, today: date) -> None:
    f = Factory(seed=1, today=today)
    tkr = f.procedure(CPT, "27447", "Arthroplasty, knee", status="preparation", days_ago=0)
    assert knee_orders_of(model, today, [tkr]) == [f"Procedure/{tkr['id']}"]


@pytest.mark.parametrize("name", OTHER_ORDERS)
def test_other_orders_not_knee_directed(model: Model, today: date, name: str) -> None:
    assert knee_orders_of(model, today, [OTHER_ORDERS[name](Factory(seed=1, today=today))]) == []


@pytest.mark.parametrize("name", KNEE_ORDERS)
def test_order_sign_card_for_each_knee_order(model: Model, today: date, order_sign_request: HookRequest, name: str) -> None:
    call = order_sign_request(orders=(KNEE_ORDERS[name],))
    evaluation = call.run(model, today)
    (drafted,) = call.context["draftOrders"]["entry"]
    reference = f"ServiceRequest/{drafted['resource']['id']}"
    assert [o.reference for o in evaluation.knee_orders] == [reference]
    (card,) = evaluation.cards
    assert card["summary"].startswith("Knee order drafted")
    display = drafted["resource"]["code"]["coding"][0]["display"]
    assert card["detail"].startswith(f"**Knee-directed order drafted:** {display}.")
    assert reference not in card["detail"]  # the order as the clinician named it, not an opaque id


@pytest.mark.parametrize("name", OTHER_ORDERS)
def test_order_sign_no_card_for_other_orders(model: Model, today: date, order_sign_request: HookRequest, name: str) -> None:
    evaluation = order_sign_request(orders=(OTHER_ORDERS[name],)).run(model, today)
    assert evaluation.knee_orders == ()
    assert evaluation.cards == []
    assert evaluation.assessment.band == "likely"  # the patient would warrant a card; the order does not


def test_spine_referral_with_knee_site_is_not_a_knee_order(model: Model, today: date, order_sign_request: HookRequest) -> None:
    """A drafted referral whose reasonReference is the patient's lumbar radiculopathy is a spine referral."""
    resources = generate("radiculopathy-knee-pain", today=today)
    radiculopathy = next(r for r in resources if r.get("code", {}).get("coding", [{}])[0].get("code") == "M54.16")

    def spine_referral(f: Factory) -> Resource:
        referral = f.service_request(
            SNOMED, "308481009", "Referral", status="draft", days_ago=0, body_site=("72696002", "Knee region structure")
        )
        return referral | {"reasonReference": [{"reference": f"Condition/{radiculopathy['id']}"}]}

    evaluation = order_sign_request(orders=(spine_referral,)).run(model, today)
    assert evaluation.knee_orders == ()
    assert evaluation.cards == []


# -- order-select and order-sign -------------------------------------------------------------------


class TestOrderHooks:
    def test_order_select_considers_only_selections(self, model: Model, today: date, order_select_request: HookRequest) -> None:
        unselected = order_select_request(orders=(knee_mri_order, chest_xray_order), selected=(1,)).run(model, today)
        assert unselected.knee_orders == ()
        assert unselected.cards == []
        selected = order_select_request(orders=(knee_mri_order, chest_xray_order), selected=(0,)).run(model, today)
        assert len(selected.knee_orders) == 1
        assert len(selected.cards) == 1

    def test_order_select_lists_only_selected_knee_orders(
        self, model: Model, today: date, order_select_request: HookRequest
    ) -> None:
        xray = KNEE_ORDERS["knee-xray-cpt"]
        call = order_select_request(orders=(knee_mri_order, xray), selected=(1,))
        evaluation = call.run(model, today)
        entries = call.context["draftOrders"]["entry"]
        xray_ref = f"ServiceRequest/{entries[1]['resource']['id']}"
        mri_name, xray_name = (e["resource"]["code"]["coding"][0]["display"] for e in entries)
        assert [o.reference for o in evaluation.knee_orders] == [xray_ref]
        assert xray_name in evaluation.cards[0]["detail"]
        assert mri_name not in evaluation.cards[0]["detail"]

    def test_order_sign_considers_all_drafts(self, model: Model, today: date, order_sign_request: HookRequest) -> None:
        call = order_sign_request(orders=(chest_xray_order, knee_mri_order, KNEE_ORDERS["tkr-cpt"]))
        evaluation = call.run(model, today)
        entries = call.context["draftOrders"]["entry"]
        refs = [f"ServiceRequest/{e['resource']['id']}" for e in entries]
        names = [e["resource"]["code"]["coding"][0]["display"] for e in entries]
        assert [o.reference for o in evaluation.knee_orders] == refs[1:]
        (card,) = evaluation.cards
        assert all(name in card["detail"] for name in names[1:])
        assert names[0] not in card["detail"]

    def test_order_sign_ignores_selections(self, model: Model, today: date, order_sign_request: HookRequest) -> None:
        call = order_sign_request(orders=(knee_mri_order,))
        call.context["selections"] = ["ServiceRequest/not-there"]
        assert len(call.run(model, today).cards) == 1

    @pytest.mark.parametrize(
        ("profile", "indicator"),
        [
            ("radiculopathy-knee-pain", "warning"),
            ("bunion-back-weakness", None),
            ("double-coded-episode", "info"),
            ("elderly-stenosis", "info"),
            ("acl-tear-only", None),
            ("knee-oa-only", None),
            ("child", None),
            ("resolved-knee-complaint", None),
            ("already-referred", None),
            ("recent-lumbar-mri", None),
        ],
    )
    @pytest.mark.parametrize("hook", ["order_sign_request", "order_select_request"])
    def test_order_card_only_when_actionable(
        self, model: Model, today: date, request: pytest.FixtureRequest, hook: str, profile: str, indicator: str | None
    ) -> None:
        evaluation = request.getfixturevalue(hook)(profile).run(model, today)
        assert len(evaluation.knee_orders) == 1
        assert [c["indicator"] for c in evaluation.cards] == ([indicator] if indicator else [])
        for card in evaluation.cards:
            assert card["summary"].startswith("Knee order drafted")

    def test_patient_view_summary_differs(self, model: Model, today: date, patient_view_request: HookRequest) -> None:
        (card,) = patient_view_request().run(model, today).cards
        assert not card["summary"].startswith("Knee order drafted")
        assert "Knee-directed order drafted" not in card["detail"]

    def test_patient_view_ignores_draft_orders(self, model: Model, today: date, patient_view_request: HookRequest) -> None:
        call = patient_view_request("acl-tear-only")
        call.context["draftOrders"] = searchset([knee_mri_order(Factory(seed=2, today=today))])
        evaluation = call.run(model, today)
        assert evaluation.knee_orders == ()
        assert evaluation.cards == []

    def test_missing_draft_orders(self, model: Model, today: date, order_sign_request: HookRequest) -> None:
        call = order_sign_request()
        del call.context["draftOrders"]
        evaluation = call.run(model, today)
        assert evaluation.cards == []
        assert evaluation.assessment.band == "likely"

    def test_evaluation_uuid_helpers(self, model: Model, today: date, order_sign_request: HookRequest) -> None:
        evaluation = order_sign_request().run(model, today)
        assert evaluation.card_uuids() == [evaluation.cards[0]["uuid"]]
        assert evaluation.suggestion_uuids() == [evaluation.cards[0]["suggestions"][0]["uuid"]]


# -- public example requests -----------------------------------------------------------------------


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("file", "service_id"),
    [
        ("order_select_hook_request.json", "spine-knee-order-select"),
        ("order_sign_hook_request.json", "spine-knee-order-sign"),
    ],
)
def test_public_requests(model: Model, today: date, shared_data: Path, file: str, service_id: str) -> None:
    request = orjson.loads((shared_data / "cds-hooks" / file).read_bytes())
    service = SERVICES_BY_ID[service_id]
    assert request["hook"] == service.hook
    evaluation = evaluate(
        model, service, request["context"], {}, CardOptions(DOCS_URL), today=today, instance=request["hookInstance"]
    )
    assert evaluation.cards == []
    assert evaluation.knee_orders == ()
    assert not evaluation.assessment.eligible
    assert evaluation.assessment.patient_reference is None
