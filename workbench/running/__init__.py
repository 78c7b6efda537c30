"""Running a run beside the Session: the processes of a data-parallel run, started, supervised and reaped
(launch.py). The engine trains; this package only manages the processes that train."""
