"""The augmented language model (paper §3.4, §4): backbones, tokenizers, parsers, heads, tasks.

``build_task`` and ``build_model`` build from plain config tables (recipes);
the classes compose by hand too::

    from diffcomp.model import build_model, build_task
    task = build_task("arithmetic", {"base": 128}, seed=0)
    model = build_model({"backbone": "llama"}, {"alu": "lookup", "base": 128}, task)
    out = model(next(iter(DataLoader(task.dataset("train"), batch_size=32))))
    out.loss.backward()

transformers is imported only when a transformer backbone or tokenizer is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_package

# Names resolve on first use, so that reading a saved model's config or tokenizing a question imports no
# torch: public name -> the module that defines it.
_LAZY: dict[str, str] = {
    "AugmentedModel": ".augmented", "ComputerModel": ".augmented",
    "Backbone": ".backbones", "llama": ".backbones", "pretrained": ".backbones",
    **{name: ".build" for name in ("COMPUTER_FIELDS", "MODEL_FIELDS", "build_model", "build_task",
                                    "computer_fields", "model_fields", "task_ops")},
    "ALUComputer": ".computer", "Computer": ".computer", "MachineComputer": ".computer",
    "MixtureHead": ".heads", "Output": ".heads", "Readout": ".heads", "answer_output": ".heads",
    "MinimalNetwork": ".minimal",
    "Parser": ".parsers", "Target": ".parsers", "build_parser": ".parsers",
    "Task": ".tasks", "TaskDataset": ".tasks",
    **{name: ".tokenizers" for name in ("ByteTokenizer", "PretrainedTokenizer", "decode_texts", "encode_texts",
                                         "load_tokenizer")},
}

__all__ = [
    "ALUComputer", "AugmentedModel", "Backbone", "ByteTokenizer", "COMPUTER_FIELDS", "Computer", "ComputerModel",
    "MODEL_FIELDS", "MachineComputer", "MinimalNetwork", "MixtureHead", "Output", "Parser", "PretrainedTokenizer",
    "Readout", "Target", "Task", "TaskDataset", "answer_output", "build_model", "build_parser", "build_task",
    "computer_fields", "decode_texts", "encode_texts", "llama", "load_tokenizer", "model_fields", "pretrained",
    "task_ops",
]

lazy_package(__name__)


if TYPE_CHECKING:  # for type checkers and IDEs; at run time these resolve lazily
    from .augmented import AugmentedModel, ComputerModel
    from .backbones import Backbone, llama, pretrained
    from .build import (COMPUTER_FIELDS, MODEL_FIELDS, build_model, build_task, computer_fields, model_fields,
                        task_ops)
    from .computer import ALUComputer, Computer, MachineComputer
    from .heads import MixtureHead, Output, Readout, answer_output
    from .minimal import MinimalNetwork
    from .parsers import Parser, Target, build_parser
    from .tasks import Task, TaskDataset
    from .tokenizers import ByteTokenizer, PretrainedTokenizer, decode_texts, encode_texts, load_tokenizer
