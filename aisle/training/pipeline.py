"""`aisle train` end to end: data -> towers -> embeddings -> head -> evaluation -> checkpoint.

1. Load and index the dataset; cache the frozen lower layers' states of every item text and
   every distinct query (aisle.training.encoding).
2. Zero-shot embeddings: the base model's top layers over the cache.
3. Contrastive fine-tuning of the towers' top layers (aisle.training.towers).
4. Fine-tuned embeddings of the whole catalog and every query, computed once in float32.
5. The fusion head on train-session impressions over those frozen embeddings (aisle.training.head).
6. Evaluation of zero-shot / towers / fusion on test sessions and cold-start items
   (aisle.training.evaluate), then the checkpoint, CKPT/metrics.json and a printed table.

Randomness: python, numpy and torch are seeded from the run's seed, and the tower sampling, the
head's lists and the evaluation pools draw from independent streams of it, so the pools a method
is evaluated on do not change when a training setting does.
"""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from aisle.data.format import load_dataset
from aisle.errors import CheckpointError
from aisle.modeling.checkpoint import METRICS, Manifest
from aisle.modeling.fusion import FusionHeadConfig
from aisle.modeling.loading import save_checkpoint
from aisle.modeling.towers import TextTower, check_bert_dir
from aisle.schema import ITEM_FEATURES
from aisle.tokenization import Bucketing, encode_batch, load_tokenizer
from aisle.training.corpus import Corpus, RankingLists
from aisle.training.encoding import CutEncoder, StateCache
from aisle.training.evaluate import cosine_scores, evaluate, format_table, fusion_scores
from aisle.training.head import feature_stats, train_head
from aisle.training.presets import TrainConfig
from aisle.training.towers import PairSet, train_towers

#: Item texts compared between the cut encoder and the whole encoder before training.
SPLIT_CHECK_TEXTS = 8


@contextmanager
def stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Time a pipeline stage and report it on stderr (stdout carries the metrics table).

    CPU time is reported beside wall time: on a shared machine it shows the stage's own cost.
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    print(f"[aisle train] {name} ...", file=sys.stderr, flush=True)
    yield
    timings[name] = time.perf_counter() - start
    cpu = time.process_time() - start_cpu
    print(f"[aisle train] {name}: {timings[name]:.1f} s wall, {cpu:.1f} s cpu", file=sys.stderr, flush=True)


def prepare_output(out: Path) -> None:
    """Create the checkpoint directory before any work, so a bad path fails in seconds."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: --out exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"{out}: cannot create the checkpoint directory: {e.strerror}") from e


def seed_everything(seed: int, threads: int | None) -> list[np.random.Generator]:
    """Seed python, numpy and torch; return independent generators for towers, head and evaluation."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]


def train(data_dir: Path, out: Path, config: TrainConfig, base_model_dir: Path) -> dict:
    """Train, evaluate and write a checkpoint to `out`; returns the metrics written to metrics.json."""
    from transformers import AutoTokenizer

    prepare_output(out)
    check_bert_dir(base_model_dir)
    tower_rng, head_rng, eval_rng = seed_everything(config.seed, config.threads)
    timings: dict[str, float] = {}
    with stage("load data and base model", timings):
        dataset = load_dataset(data_dir)
        corpus = Corpus.from_dataset(dataset)
        base = CutEncoder.freeze_below(
            TextTower.from_pretrained(base_model_dir).encoder, config.towers.trainable_layers
        )
        item_bucketing, query_bucketing = Bucketing(config.limits.item_buckets), Bucketing(config.limits.query_buckets)
        item_tokenizer = load_tokenizer(base_model_dir, item_bucketing.max_length)
        query_tokenizer = load_tokenizer(base_model_dir, query_bucketing.max_length)
        sample = encode_batch(item_tokenizer, corpus.item_texts[:SPLIT_CHECK_TEXTS], item_bucketing)
        base.check_against(*(torch.from_numpy(a) for a in sample))
    with stage("cache frozen layers", timings):
        batch = config.embed_batch_size
        item_cache = StateCache.build(
            base, item_tokenizer, corpus.item_texts, item_bucketing, batch_size=batch, desc="items"
        )
        query_cache = StateCache.build(
            base, query_tokenizer, corpus.query_texts, query_bucketing, batch_size=batch, desc="queries"
        )
    with stage("zero-shot embeddings", timings):
        base_items = item_cache.embed(base, batch_size=batch, desc="base items")
        base_queries = query_cache.embed(base, batch_size=batch, desc="base queries")
    with stage("tower fine-tuning", timings):
        query_tower = CutEncoder(copy.deepcopy(base.model), base.cut)
        item_tower = query_tower if config.tie_towers else CutEncoder(copy.deepcopy(base.model), base.cut)
        pairs = PairSet.mine(corpus)
        losses = train_towers(query_tower, item_tower, query_cache, item_cache, pairs, config.towers, tower_rng)
        tenth = max(len(losses) // 10, 1)
        print(
            f"[aisle train] {len(pairs)} pairs; InfoNCE mean over the first / last tenth of the steps: "
            f"{np.mean(losses[:tenth]):.3f} / {np.mean(losses[-tenth:]):.3f}",
            file=sys.stderr,
        )
    with stage("fine-tuned embeddings", timings):
        items = item_cache.embed(item_tower, batch_size=batch, desc="items")
        queries = query_cache.embed(query_tower, batch_size=batch, desc="queries")
    with stage("fusion head", timings):
        warm = np.flatnonzero(~corpus.cold)
        mean, std = feature_stats(corpus.features[warm], ITEM_FEATURES)
        head_config = FusionHeadConfig(
            embedding_dim=items.shape[1],
            hidden_dims=config.head.hidden_dims,
            dropout=config.head.dropout,
            feature_mean=mean,
            feature_std=std,
        )
        sessions = corpus.sessions_with_clicks("train")
        if config.head.max_sessions is not None and config.head.max_sessions < len(sessions):
            keep = np.sort(head_rng.choice(len(sessions), size=config.head.max_sessions, replace=False))
            sessions = [sessions[n] for n in keep]
        train_lists = RankingLists.build(
            corpus,
            sessions,
            extra=config.head.random_negatives,
            pool=warm,
            rng=head_rng,
            max_history=config.limits.max_history,
            shuffle=False,
        )
        features = torch.from_numpy(corpus.features)
        head, head_losses = train_head(
            head_config,
            train_lists,
            *train_lists.session_vectors(queries, items, config.limits.history_decay),
            items,
            features,
            config.head,
            head_rng,
        )
        print(f"[aisle train] {len(train_lists)} train lists, listwise loss per epoch {head_losses}", file=sys.stderr)
    with stage("evaluation", timings):
        test_lists = RankingLists.build(
            corpus,
            corpus.sessions_with_clicks("test"),
            extra=config.evaluation.sampled_candidates,
            pool=np.arange(corpus.num_items),
            rng=eval_rng,
            max_history=config.limits.max_history,
            shuffle=True,
        )
        base_vectors = test_lists.session_vectors(base_queries, base_items, config.limits.history_decay)
        tuned_vectors = test_lists.session_vectors(queries, items, config.limits.history_decay)
        scores = {
            "zero_shot": cosine_scores(*base_vectors, test_lists, base_items),
            "towers": cosine_scores(*tuned_vectors, test_lists, items),
            "fusion": fusion_scores(head, *tuned_vectors, test_lists, items, features),
        }
        metrics = evaluate(scores, test_lists, corpus.cold, config.evaluation)
    with stage("save checkpoint", timings):
        manifest = Manifest(
            base_model=str(base_model_dir),
            embedding_dim=int(items.shape[1]),
            limits=config.limits,
            tied_towers=config.tie_towers,
            data_fingerprint=dataset.manifest.fingerprint,
        )
        tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
        save_checkpoint(out, manifest, TextTower(query_tower.model), TextTower(item_tower.model), head, tokenizer)
        (out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    print(format_table(metrics, config.evaluation))
    print(f"[aisle train] total {sum(timings.values()):.1f} s", file=sys.stderr)
    return metrics
