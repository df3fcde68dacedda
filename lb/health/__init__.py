"""Health monitors with Piranha nanny semantics, as an asyncio library the engine drives."""

from .checks import KINDS, CheckResult, CheckSpec, decode_escapes, program_argv, run_check
from .load import LoadMonitorTask, LoadSpec, dynamic_weight, parse_report
from .monitor import Monitor, NannyPolicy

__all__ = ["KINDS", "CheckSpec", "CheckResult", "decode_escapes", "program_argv", "run_check",
           "NannyPolicy", "Monitor", "LoadSpec", "LoadMonitorTask", "parse_report", "dynamic_weight"]
