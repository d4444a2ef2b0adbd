"""``POST /v1/feedback``: labels and rewards for served predictions.

Feedback lands in the warehouse next to the prediction (``feedback`` view, joined on
``request_id``); a reward for a request a bandit routed also updates that bandit.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, Field, model_validator

from registry import NotFound
from serving.dataplane import DataPlane
from serving.rest import DataPlaneDep, json_response
from warehouse import run_query
from warehouse.feedback import FeedbackRecord, write_feedback

feedback = APIRouter(tags=["feedback"])
MAX_ITEMS = 10_000


class FeedbackItem(BaseModel):
    """A label and/or a reward (numbers, or true/false) for one served prediction."""

    request_id: str
    label: float | None = None
    reward: float | None = None


class FeedbackBody(BaseModel):
    """One item, or up to :data:`MAX_ITEMS` of them under ``feedback``."""

    feedback: list[FeedbackItem] = Field(min_length=1, max_length=MAX_ITEMS)

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> Any:
        """The checks with their field named as the client wrote it (``feedback[3].label``,
        or ``feedback.label`` for a single item)."""
        items = data.get("feedback") if isinstance(data, dict) and "feedback" in data else [data]
        if not isinstance(items, list) or not items or len(items) > MAX_ITEMS:
            raise ValueError(f"feedback: expected 1 to {MAX_ITEMS} items")
        checked = []
        for i, item in enumerate(items):
            where = f"feedback[{i}]" if len(items) > 1 else "feedback"
            if not isinstance(item, dict) or not isinstance(item.get("request_id"), str):
                raise ValueError(f"{where}.request_id: expected the id of a served request")
            label, reward = _number(item, "label", where), _number(item, "reward", where)
            if label is None and reward is None:
                raise ValueError(f"{where}: expected a label or a reward")
            checked.append({"request_id": item["request_id"], "label": label, "reward": reward})
        return {"feedback": checked}


def _number(item: dict[str, Any], key: str, where: str) -> float | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}.{key}: expected a finite number or true/false")
    return float(value)


def _lookup_logged(plane: DataPlane, ids: list[str]) -> dict[str, tuple[str, int, str | None, str]]:
    """Served requests this process no longer remembers, from the prediction log."""
    quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
    _, rows = run_query(
        plane.repository.settings.logs_dir,
        "select request_id, model, version, experiment, route from predictions "
        f"where not shadow and status = 200 and request_id in ({quoted})",
    )
    return {r[0]: (r[1], int(r[2]), r[3], r[4] or "") for r in rows}


@feedback.post("/v1/feedback")
async def post_feedback(plane: DataPlaneDep, body: FeedbackBody) -> Response:
    parsed = [(item.request_id, item.label, item.reward) for item in body.feedback]
    known = {rid: plane.recent[rid] for rid, _, _ in parsed if rid in plane.recent}
    missing = [rid for rid, _, _ in parsed if rid not in known]
    if missing:
        known |= await asyncio.to_thread(_lookup_logged, plane, missing)
    unknown = [rid for rid, _, _ in parsed if rid not in known]
    if unknown:
        raise NotFound(f"request_id '{unknown[0]}' is not a served prediction")
    now = datetime.now(UTC)
    region = plane.repository.settings.region  # feedback stays in this region's log
    records = []
    for rid, label, reward in parsed:
        model, version, experiment, route = known[rid]
        records.append(
            FeedbackRecord(rid, model, version, experiment, label, reward, now, region)
        )
        if reward is not None and route == "bandit" and experiment is not None:
            plane.repository.record_reward(model, experiment, version, reward)
    await asyncio.to_thread(write_feedback, plane.repository.settings.logs_dir, records)
    return json_response({"accepted": len(records)})
