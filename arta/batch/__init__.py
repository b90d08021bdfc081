"""Resumable batches: the job file, the manifest that remembers every job, the plan, the gallery.

``run`` runs a batch on the client's engine; ``plan`` decides what each job
still needs; ``manifest`` is the batch's fsynced memory; ``jobfile`` reads
prompts and JSON lines; ``gallery`` writes the HTML page of the results.
"""

from arta.batch.run import (
    FIELDS,
    POSSIBLY_RESUBMITTED_NOTE,
    BatchJob,
    BatchReport,
    Manifest,
    Outcome,
    Task,
    check_folder,
    plan,
    read_jobs,
    run_batch,
    running,
)

__all__ = ["FIELDS", "POSSIBLY_RESUBMITTED_NOTE", "BatchJob", "BatchReport", "Manifest",
           "Outcome", "Task", "check_folder", "plan", "read_jobs", "run_batch", "running"]
