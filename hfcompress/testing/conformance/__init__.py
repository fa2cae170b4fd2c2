"""Conformance checks for technique plugins: run them in your plugin's own test suite.

    from hfcompress.testing.conformance import check_technique
    from my_plugin import MyTechnique

    def test_my_technique_conforms(tmp_path):
        check_technique(
            MyTechnique,
            configs=[{"ratio": 0.5}, {"ratio": 0.25, "mode": "fast"}],
            bad_configs=[{"ratio": 2.0}, {"mode": "nope"}],
            tmp_path=tmp_path,
        )

What is checked (each failure raises :class:`ConformanceError`, an ``AssertionError`` whose
message names the technique, the config, the model family and what to fix):

1. the class: ``name`` (lower-case, hyphenated), ``summary``, ``Config`` a
   :class:`~hfcompress.plugin.TechniqueConfig` subclass with ``extra="forbid"``; the technique
   instantiates without arguments; ``data_requirement``/``output_format`` answer sensibly;
2. the module imports without torch, transformers, datasets or onnx (``hfcompress plugins``
   imports every plugin just to list it);
3. every config round-trips through recipe YAML (:class:`hfcompress.recipe.Recipe` dumps and
   loads back an equal recipe); a config with a misspelled field is rejected;
4. every bad config fails with :class:`~hfcompress.errors.BadInputError` (exit code 2) when the
   recipe is validated, or else in ``check`` on every tiny model;
5. for every config and every tiny model family (BERT encoder, BERT classifier, Llama causal LM):
   ``check`` either accepts, or rejects with a ``BadInputError`` that names the model; at least
   one family accepts each config; then ``apply`` returns a :class:`~hfcompress.plugin.StepResult`
   whose ``changes`` are strict JSON, whose state has the promised format and produces finite
   outputs; the state saves with :func:`hfcompress.artifact.save_state` and reloads with
   :func:`hfcompress.artifact.load_state` giving the same outputs (within ``atol``);
6. optionally (``end_to_end=True``) the first accepted case runs through
   :func:`hfcompress.compress` with a small local data file.

Everything runs on CPU with tiny random models and a small real text sample (no network).
This module imports no heavy library at import time.

Modules: :mod:`.report` (the error, the report, shared constants), :mod:`.contract` (checks 1–4),
:mod:`.cases` (check 5, one function per phase), :mod:`.end_to_end` (check 6) and :mod:`.runner`
(:func:`check_technique`).
"""

from __future__ import annotations

from .cases import _apply_phase as _apply_phase
from .cases import _check_phase as _check_phase
from .cases import _check_step_result as _check_step_result
from .cases import _compare_phase as _compare_phase
from .cases import _json_problem as _json_problem
from .cases import _output_phase as _output_phase
from .cases import _outputs as _outputs
from .cases import _primary_output as _primary_output
from .cases import _run_case as _run_case
from .cases import _save_reload_phase as _save_reload_phase
from .cases import _train_data as _train_data
from .cases import make_tiny_models as make_tiny_models
from .contract import _as_dict as _as_dict
from .contract import _check_bad_config as _check_bad_config
from .contract import _recipe as _recipe
from .contract import check_class as check_class
from .contract import check_configs as check_configs
from .contract import check_light_import as check_light_import
from .contract import registered as registered
from .end_to_end import _cache_env as _cache_env
from .end_to_end import _end_to_end as _end_to_end
from .report import FAMILIES as FAMILIES
from .report import FAMILY_TASKS as FAMILY_TASKS
from .report import HEAVY_MODULES as HEAVY_MODULES
from .report import NAME_PATTERN as NAME_PATTERN
from .report import OUTPUT_SEQUENCE_LENGTH as OUTPUT_SEQUENCE_LENGTH
from .report import OUTPUT_TEXTS as OUTPUT_TEXTS
from .report import UNKNOWN_FIELD as UNKNOWN_FIELD
from .report import CaseResult as CaseResult
from .report import ConformanceError as ConformanceError
from .report import ConformanceReport as ConformanceReport
from .runner import _check_config_answers as _check_config_answers
from .runner import _run_cases as _run_cases
from .runner import _targets as _targets
from .runner import check_technique as check_technique

__all__ = [
    "FAMILIES",
    "HEAVY_MODULES",
    "CaseResult",
    "ConformanceError",
    "ConformanceReport",
    "check_class",
    "check_configs",
    "check_light_import",
    "check_technique",
    "make_tiny_models",
    "registered",
]
