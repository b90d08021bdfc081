"""Poll policies: when to ask the service about a job.

``policy`` holds the fixed :class:`PollPolicy` (tenacity's waits) and the
:class:`PollPlanner` protocol every policy meets; ``learned`` the default
policy that learns from the jobs it sees (``model`` and ``stats`` are its
model of the work and the statistics file it shares across processes).
"""

from arta.polling.learned import LearnedPollPolicy, default_poll_policy
from arta.polling.policy import PollPlanner, PollPolicy, check_timeout, check_wait_options

__all__ = ["LearnedPollPolicy", "PollPlanner", "PollPolicy", "check_timeout",
           "check_wait_options", "default_poll_policy"]
