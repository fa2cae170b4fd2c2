"""The evaluation card: README.md of an output folder, built from results.json and the recipe only.

Metadata (``huggingface_hub.ModelCardData``): ``base_model``, ``base_model_relation`` (one of
the values the Hub defines: adapter, merge, quantized, finetune), ``license`` carried over from
the base model when it is known, ``tags``, ``pipeline_tag`` and a ``model-index`` with the
compressed model's metrics on the held-out data.

Body: the base-vs-compressed table, a plot (``evaluation.png``), the steps, the recipe, the
hardware and software it was measured on, how to load it, how to reproduce it. Every number on
the card is a value of results.json (or of :func:`hfcompress.evaluation.compare_blocks` applied
to it, stored as ``results["comparison"]``), printed with :func:`fmt`, which never rounds: the
evaluation rounded once, when results.json was built. Labels, units and directions ("better" /
"worse") are the evaluators' own declarations (:class:`hfcompress.plugin.Metric`); the data's
description and licence are its data source's (``DataSource.description``/``license``).

Modules: :mod:`.metadata` (base model id, relation, license), :mod:`.tables` (the tables and
:func:`fmt`), :mod:`.snippets` (how to load each format), :mod:`.plot` (``evaluation.png``) and
:mod:`.body` (:func:`write_card`, one function per section).
"""

from __future__ import annotations

from .body import card_for_repo as card_for_repo
from .body import write_card as write_card
from .metadata import BUILTIN_HUB_IDS as BUILTIN_HUB_IDS
from .metadata import HUB_ID as HUB_ID
from .metadata import _data_source as _data_source
from .metadata import _data_spec as _data_spec
from .metadata import _eval_spec_name as _eval_spec_name
from .metadata import _folder_name as _folder_name
from .metadata import _gguf_license as _gguf_license
from .metadata import _model_name as _model_name
from .metadata import _readme_license as _readme_license
from .metadata import _recipe_declarations as _recipe_declarations
from .metadata import base_license as base_license
from .metadata import base_model_id as base_model_id
from .metadata import base_model_relation as base_model_relation
from .metadata import log as log
from .plot import PLOT_FILE as PLOT_FILE
from .plot import _plot_metric as _plot_metric
from .plot import write_plot as write_plot
from .snippets import _hfcompress_load as _hfcompress_load
from .snippets import _sentence_transformers_snippet as _sentence_transformers_snippet
from .snippets import _snippet as _snippet
from .tables import _comparison_table as _comparison_table
from .tables import _environment_lines as _environment_lines
from .tables import _metric_label as _metric_label
from .tables import _model_index_metrics as _model_index_metrics
from .tables import _short as _short
from .tables import _signed as _signed
from .tables import _steps_table as _steps_table
from .tables import _value as _value
from .tables import fmt as fmt

__all__ = ["PLOT_FILE", "base_model_id", "base_model_relation", "fmt", "write_card"]
