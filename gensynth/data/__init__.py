"""Data: dataset shards (writer, converter, card), openers for remote stores and the streaming loader.

Public entry points: :func:`gensynth.data.loader.train_batches`, :func:`~gensynth.data.loader.eval_batches`,
:func:`~gensynth.data.loader.epoch_length`, :func:`~gensynth.data.loader.to_condition`,
:func:`~gensynth.data.loader.resolve_shards` and :func:`gensynth.data.convert.convert`.
"""
from gensynth.data.loader import Batch, epoch_length, eval_batches, resolve_shards, to_condition, train_batches

__all__ = ["Batch", "epoch_length", "eval_batches", "resolve_shards", "to_condition", "train_batches"]
