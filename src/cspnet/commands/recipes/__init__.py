"""One recipe per ``--task``: what the task-generic driver (:mod:`cspnet.commands.driver`) asks of a
task. A recipe adds its own options, builds the data, the engine's task (loss and metrics) and the
checkpoint metadata, and says how results are reported and how predictions are shown; the driver
does the rest (options, resume, run directories, the engine, devices, DDP).

The methods a recipe has: ``add_options(parser, verb)``; train: ``train_data(args, in_chans)``,
``in_memory(data)``, ``model_kwargs(data)``, ``pretraining(args, run_dir, dist)`` (the argv of a
training run the driver makes first, e.g. a backbone's, or None), ``prepare_model(args, model)``,
``task(args, data, model)``, ``train_collate(args, data, model)``, ``checkpoint_extra(args, data)``,
``summary(data)``,
``after_fit(trainer, data, run_dir)``, ``final_lines(final, run_dir)``; val: ``eval_model(args)``,
``eval_data(args, spec, model, meta, path)``, ``eval_task(data, model)``, ``val_metrics(metrics)``,
``val_line(metrics)``, ``write_val_files(out, task, metrics)``; predict: ``files(items)``,
``predict(args, model, meta, files, device, optimize)``; and the attributes ``name``,
``default_model``, ``collate`` (evaluation batches), ``data_help``, ``engine_defaults`` (the task's
own defaults for engine options the command line leaves unset).
"""

from .classify import ClassifyRecipe
from .detect import DetectRecipe

RECIPES = {r.name: r for r in (ClassifyRecipe(), DetectRecipe())}

__all__ = ["RECIPES", "ClassifyRecipe", "DetectRecipe"]
