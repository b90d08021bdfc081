"""Sign-ups and errors when P processes start together and each wants a token.

Compares ``arta``'s store (atomic writes, file lock, double-checked renewal,
expiry from the JWT) with a baseline that reproduces the old provider's
store (``auth_ARTA.json`` dated by its mtime, written with a plain
``open("w")``, no lock), in the same run, against the emulator over loopback.

    python benchmarks/token_store.py [--processes 1,8,32,64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from typing import Any, Callable

import requests

from arta.auth import Authenticator, FileTokenStore
from arta.config import Settings
from arta.emulator import Emulator
from arta.transport import RequestsTransport


def arta_token(endpoint: str, home: str) -> str:
    """What an ``arta`` process does: the shared, locked store."""
    settings = Settings.resolve(endpoint=endpoint, home=home)
    auth = Authenticator(settings, RequestsTransport(), FileTokenStore(settings.token_file))
    return auth.token().user_id


def old_provider_token(endpoint: str, home: str) -> str:
    """The old provider's ``read_and_refresh_token``, made synchronous, nothing else changed."""
    settings = Settings.resolve(endpoint=endpoint, home=home)
    path = settings.token_file
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        auth_data = json.loads(path.read_text())
        diff = time.time() - os.path.getmtime(path)
        expires_in = int(auth_data.get("expiresIn"))
        if diff < expires_in:
            if diff > expires_in / 2:
                answer = requests.post(settings.refresh_url, data={
                    "grant_type": "refresh_token", "refresh_token": auth_data["refreshToken"]})
                body = answer.json()
                auth_data["idToken"], auth_data["refreshToken"] = body["id_token"], body["refresh_token"]
                with path.open("w") as f:
                    json.dump(auth_data, f)
            return str(auth_data.get("localId"))
    auth_data = requests.post(settings.signup_url, json={"clientType": "CLIENT_TYPE_ANDROID"}).json()
    with path.open("w") as f:
        json.dump(auth_data, f)
    return str(auth_data.get("localId"))


STORES: dict[str, Callable[[str, str], str]] = {"arta": arta_token, "old provider": old_provider_token}


def _worker(store: str, endpoint: str, home: str, barrier: Any, results: Any) -> None:
    try:
        barrier.wait(timeout=120)
        STORES[store](endpoint, home)
        results.put("ok")
    except Exception as error:  # noqa: BLE001 - counted, the point of the benchmark
        results.put(type(error).__name__)


def run(store: str, processes: int, emulator: Emulator) -> tuple[int, list[str], float]:
    """Start ``processes`` workers together; return (sign-ups, errors, seconds)."""
    emulator.app.reset()
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes + 1), context.Queue()
    with tempfile.TemporaryDirectory() as home:
        workers = [context.Process(target=_worker, args=(store, emulator.url, home, barrier, results))
                   for _ in range(processes)]
        for worker in workers:
            worker.start()
        barrier.wait(timeout=120)  # everyone has started and imported: go
        started = time.perf_counter()
        outcomes = [results.get(timeout=120) for _ in workers]
        elapsed = time.perf_counter() - started
        for worker in workers:
            worker.join()
    return emulator.stats()["signups"], [o for o in outcomes if o != "ok"], elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,8,32,64")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    counts = [int(p) for p in args.processes.split(",")]
    print(f"{'P':>3} | {'store':<12} | {'sign-ups (per round)':<22} | {'errors':<30} | "
          f"{'median s':>8} | sign-ups vs arta")
    with Emulator(queue_seconds=0, progress_seconds=0) as emulator:
        for processes in counts:
            signups: dict[str, list[int]] = {}
            for store in STORES:
                rounds = [run(store, processes, emulator) for _ in range(args.rounds)]
                signups[store] = [r[0] for r in rounds]
                errors = [e for r in rounds for e in r[1]]
                kinds = ", ".join(f"{errors.count(k)} {k}" for k in sorted(set(errors))) or "0"
                ratio = statistics.mean(signups[store]) / statistics.mean(signups["arta"])
                print(f"{processes:>3} | {store:<12} | {signups[store]!s:<22} | {kinds:<30} | "
                      f"{statistics.median(r[2] for r in rounds):>8.3f} | {ratio:.1f}x")


if __name__ == "__main__":
    main()
