"""Readers of run logs into the one metrics stream.

    from tunepilot.logs import read_log
    log = read_log("runs/x")          # metrics.jsonl, trainer_state.json or trainer_log.jsonl, detected

A new format is one module with `detect(path)` and `read(file)` plus one registration line here; the
order of the lines is the order in which readers claim a directory.
"""

from tunepilot.logs import hf_trainer_state, llamafactory, tunepilot_stream
from tunepilot.logs.base import EXPECTED, READERS, RunLog, read_log, register_log_reader

register_log_reader("tunepilot", tunepilot_stream.detect, tunepilot_stream.read)
register_log_reader("hf_trainer_state", hf_trainer_state.detect, hf_trainer_state.read)
register_log_reader("llamafactory", llamafactory.detect, llamafactory.read)

__all__ = ["EXPECTED", "READERS", "RunLog", "read_log", "register_log_reader"]
