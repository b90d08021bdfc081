"""The image host: a DONE job's PNGs, drawn on request from the job's prompt, style and seed."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from arta.emulator.counters import Counters
from arta.emulator.jobs import JobService
from arta.emulator.messages import Request, Response, detail_response
from arta.emulator.scene import render_png

__all__ = ["ImageService"]


class ImageService:
    """Answers ``/images/{record_id}/{index}.png`` for the jobs of one :class:`JobService`.

    ``long_side`` is the pixels of an image's longer side. Images are drawn
    outside any lock, so downloads do not hold up polls.
    """

    def __init__(
        self, jobs: JobService, counters: Counters, clock: Callable[[], float], long_side: int
    ) -> None:
        if long_side < 16:
            raise ValueError(f"long_side must be at least 16 pixels, not {long_side!r}")
        self.long_side = long_side
        self._jobs = jobs
        self._counters = counters
        self._clock = clock

    def image(self, request: Request, params: Mapping[str, str]) -> Response:
        """One image of a DONE job, or 404 (unknown job, not done, index past ``images_num``)."""
        index = int(params["index"])
        job = self._jobs.jobs.get(params["record_id"])
        if job is None or job.state(self._clock()) != "DONE" or index >= job.request.images_num:
            return detail_response(404, "Not Found")
        generation = job.request
        # Image i of a job is what seed + i would give, as diffusion services do.
        body = render_png(
            generation.prompt, generation.style, job.seed + index,
            generation.aspect_ratio, self.long_side, job.blur,
        )
        self._counters.add("downloads")
        return Response(
            200,
            {
                "Content-Type": "image/png",
                "Content-Length": str(len(body)),
                "Cache-Control": "public, max-age=31536000, immutable",
            },
            body,
        )
