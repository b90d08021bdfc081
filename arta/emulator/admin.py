"""The emulator's own controls under ``/emulator/``: stats, reset, faults, job timelines.

Another process (a benchmark, a test of a CLI) reaches the test hooks
through these. They are never faulted: a test must trust them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from arta.emulator.faults import FaultPlan
from arta.emulator.messages import Request, Response, detail_response, json_response
from arta.emulator.timing import TimingModel

__all__ = ["AdminRoutes", "Controls"]


class Controls(Protocol):
    """The test hooks these routes call (an :class:`~arta.emulator.app.EmulatorApp` has them)."""

    @property
    def faults(self) -> FaultPlan:
        """The fault plan in force."""
        ...

    @property
    def fault_seed(self) -> int | None:
        """The seed the plan's draws started from."""
        ...

    @property
    def timing(self) -> TimingModel:
        """The model of how long a job computes."""
        ...

    def stats(self) -> dict[str, Any]:
        """The counters so far."""
        ...

    def reset(self) -> None:
        """Zero the counters and forget the jobs."""
        ...

    def fault_counts(self) -> dict[str, Any]:
        """How often each fault rule fired."""
        ...

    def set_faults(self, spec: str, *, fault_seed: int | None = None) -> None:
        """Replace the fault plan."""
        ...

    def set_speed(self, scale: float) -> None:
        """Scale every duration of the timing model."""
        ...

    def job_timeline(self, record_id: str) -> dict[str, Any]:
        """When a job was queued, started and ended (KeyError if unknown)."""
        ...


class AdminRoutes:
    """Handlers of ``/emulator/*``, each a thin call to one of the app's :class:`Controls`."""

    def __init__(self, app: Controls) -> None:
        self._app = app

    def stats(self, request: Request, params: Mapping[str, str]) -> Response:
        """``GET /emulator/stats``: :meth:`EmulatorApp.stats`."""
        return json_response(200, self._app.stats())

    def reset(self, request: Request, params: Mapping[str, str]) -> Response:
        """``POST /emulator/reset``: :meth:`EmulatorApp.reset`, answering the zeroed stats."""
        self._app.reset()
        return json_response(200, self._app.stats())

    def faults(self, request: Request, params: Mapping[str, str]) -> Response:
        """``GET /emulator/faults``: the plan's spec, its seed, and the counts so far."""
        return json_response(200, {
            "spec": str(self._app.faults),
            "fault_seed": self._app.fault_seed,
            "counts": self._app.fault_counts(),
        })

    def set_faults(self, request: Request, params: Mapping[str, str]) -> Response:
        """``POST /emulator/faults``: a JSON ``{"spec", "fault_seed"}`` or a bare spec."""
        try:
            text = request.body.decode("utf-8")
            if (request.header("Content-Type") or "").lower().startswith("application/json"):
                value = json.loads(text or "{}")
                if not isinstance(value, dict):
                    raise ValueError('expected a JSON object {"spec": ..., "fault_seed": ...}')
                spec, seed = value.get("spec") or "", value.get("fault_seed")
                if not isinstance(spec, str) or not (seed is None or isinstance(seed, int)):
                    raise ValueError("spec must be a string and fault_seed an integer or null")
            else:
                spec, seed = text, None
            self._app.set_faults(spec, fault_seed=seed)
        except ValueError as exc:  # UnicodeDecodeError and JSON errors are ValueErrors too
            return detail_response(400, str(exc))
        return self.faults(request, params)

    def speed(self, request: Request, params: Mapping[str, str]) -> Response:
        """``POST /emulator/speed`` ``{"scale": 2.0}``: :meth:`EmulatorApp.set_speed`.

        So that a benchmark can slow down an emulator in another process mid-run.
        """
        try:
            value = json.loads(request.body.decode("utf-8") or "{}")
        except ValueError:  # UnicodeDecodeError too
            value = None
        scale = value.get("scale") if isinstance(value, dict) else None
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            return detail_response(400, 'expected a JSON object {"scale": NUMBER}')
        try:
            self._app.set_speed(float(scale))
        except ValueError as exc:
            return detail_response(400, str(exc))
        return json_response(200, {"scale": self._app.timing.scale})

    def job(self, request: Request, params: Mapping[str, str]) -> Response:
        """``GET /emulator/jobs/{record_id}``: :meth:`EmulatorApp.job_timeline`, or 404."""
        try:
            return json_response(200, self._app.job_timeline(params["record_id"]))
        except KeyError:
            return detail_response(404, "Record not found")
