"""Pseudo-labels and the three pretraining losses against independent hand computations (numpy, explicit loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from regionclip.modeling.region_text_losses import (
    LOSS_NAMES,
    RegionTextLossConfig,
    concept_contrastive_loss,
    image_text_contrastive_loss,
    region_distillation_loss,
    region_text_losses,
    teacher_pseudo_labels,
)


# ---- hand computations ----------------------------------------------------------------------------------------------
def unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def softmax_row(values) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def hand_teacher(teacher, pool, tau, threshold):
    v, e = unit(teacher), unit(pool)
    probs = [softmax_row([float(v[r] @ e[k]) / tau for k in range(len(e))]) for r in range(len(v))]
    targets = [int(np.argmax(p)) for p in probs]
    keep = [max(p) > threshold for p in probs]
    if not any(keep):
        keep = [True] * len(probs)
    return probs, targets, keep


def hand_distill(student, pool, teacher_probs, tau):
    f, e = unit(student), unit(pool)
    total = 0.0
    for r in range(len(f)):
        p = softmax_row([float(f[r] @ e[k]) / tau for k in range(len(e))])
        total += sum(q * (math.log(q) - math.log(p[k])) for k, q in enumerate(teacher_probs[r]) if q > 0)
    return total / len(f)


def hand_contrastive(student, pool, targets, tau):
    f, e = unit(student), unit(pool)
    total = 0.0
    for i in range(len(f)):
        row = softmax_row([float(f[i] @ e[targets[j]]) / tau for j in range(len(f))])
        total += -math.log(sum(row[j] for j in range(len(f)) if targets[j] == targets[i]))
    return total / len(f)


def hand_image_text(images, texts, tau):
    g, t = unit(images), unit(texts)
    n = len(g)
    s = [[float(g[i] @ t[j]) / tau for j in range(n)] for i in range(n)]
    image_to_text = sum(-math.log(softmax_row(s[i])[i]) for i in range(n)) / n
    text_to_image = sum(-math.log(softmax_row([s[i][j] for i in range(n)])[j]) for j in range(n)) / n
    return (image_to_text + text_to_image) / 2


def tensors(*arrays):
    return [torch.tensor(np.asarray(a), dtype=torch.float64) for a in arrays]


# ---- fixtures: an orthonormal concept pool, so probabilities are known in closed form -------------------------------
K = D = 12


def confident(k: int, noise: np.ndarray) -> np.ndarray:
    """A region pointing at concept k (teacher probability ≈ 1 at τ = 0.01)."""
    return np.eye(D)[k] + noise


AMBIGUOUS = np.ones(D)  # equally close to all 12 concepts: probability 1/12 < 0.1 each


@pytest.fixture()
def batch():
    rng = np.random.default_rng(0)
    pool = np.eye(K) * rng.uniform(0.5, 2.0, (K, 1))  # un-normalised on purpose
    teacher = np.stack([confident(3, 0.3 * rng.normal(size=D)), AMBIGUOUS, confident(5, 0.3 * rng.normal(size=D)),
                        confident(3, 0.3 * rng.normal(size=D)), AMBIGUOUS + 1e-4 * rng.normal(size=D)])
    student = rng.normal(size=(5, D))
    return pool, teacher, student


@pytest.mark.parametrize("tau", [0.01, 0.3])
def test_teacher_pseudo_labels_match_hand_computation(batch, tau):
    pool, teacher, _ = batch
    labels = teacher_pseudo_labels(*tensors(teacher, pool), temperature=tau, threshold=0.1)
    probs, targets, keep = hand_teacher(teacher, pool, tau, 0.1)
    np.testing.assert_allclose(labels.probs.numpy(), probs, rtol=1e-10, atol=1e-300)
    assert labels.targets.tolist() == targets and labels.keep.tolist() == keep
    if tau == 0.01:
        assert keep == [True, False, True, True, False] and targets[0] == targets[3] == 3 and targets[2] == 5
    assert not labels.probs.requires_grad


def test_no_confident_region_keeps_every_region(batch):
    pool, _, student = batch
    teacher = np.stack([AMBIGUOUS] * 3)
    labels = teacher_pseudo_labels(*tensors(teacher, pool))
    np.testing.assert_allclose(labels.probs.numpy(), np.full((3, K), 1 / K), rtol=1e-12)
    assert labels.keep.tolist() == [True, True, True]
    losses = region_text_losses(*tensors(student[:3], teacher, pool, student[:2], student[2:4]))
    # every region counts in both region losses
    assert losses["region_distill"].item() == pytest.approx(hand_distill(student[:3], pool, [[1 / K] * K] * 3, 0.01))
    hand = hand_contrastive(student[:3], pool, labels.targets.tolist(), 0.01)
    assert losses["concept_contrastive"].item() == pytest.approx(hand, rel=1e-10)


@pytest.mark.parametrize("tau", [0.01, 0.3])
def test_distillation_is_kl_teacher_to_student_averaged_over_regions(batch, tau):
    pool, teacher, student = batch
    probs, _, _ = hand_teacher(teacher, pool, 0.01, 0.1)
    loss = region_distillation_loss(*tensors(student, pool, probs), temperature=tau)
    assert loss.item() == pytest.approx(hand_distill(student, pool, probs, tau), rel=1e-10)


@pytest.mark.parametrize("tau", [0.01, 0.3])
def test_concept_contrastive_counts_every_same_concept_column_as_positive(batch, tau):
    pool, _, student = batch
    targets = [3, 5, 3, 7, 3]  # duplicates are separate columns, all positives of each other
    loss = concept_contrastive_loss(*tensors(student, pool), torch.tensor(targets), temperature=tau)
    assert loss.item() == pytest.approx(hand_contrastive(student, pool, targets, tau), rel=1e-10)


def test_concept_contrastive_is_zero_when_all_regions_share_a_concept(batch):
    pool, _, student = batch
    loss = concept_contrastive_loss(*tensors(student, pool), torch.tensor([4, 4, 4, 4, 4]))
    assert abs(loss.item()) < 1e-12


@pytest.mark.parametrize("tau", [0.01, 0.3])
def test_image_text_loss_is_symmetric_infonce_over_the_batch(tau):
    rng = np.random.default_rng(1)
    images, texts = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    texts[2] = images[2] + 0.1 * rng.normal(size=6)  # one easy pair, so the rows differ in difficulty
    loss = image_text_contrastive_loss(*tensors(images, texts), temperature=tau, rank=0, world_size=1)
    assert loss.item() == pytest.approx(hand_image_text(images, texts, tau), rel=1e-10)
    with pytest.raises(ValueError):
        image_text_contrastive_loss(*tensors(images, texts[:3]))


def test_combined_losses_select_kept_regions_and_apply_weights(batch):
    pool, teacher, student = batch
    rng = np.random.default_rng(2)
    images, texts = rng.normal(size=(3, D)), rng.normal(size=(3, D))
    probs, targets, keep = hand_teacher(teacher, pool, 0.01, 0.1)
    kept = [r for r in range(len(keep)) if keep[r]]
    expected = {
        "region_distill": hand_distill(student[kept], pool, [probs[r] for r in kept], 0.01),
        "concept_contrastive": hand_contrastive(student[kept], pool, [targets[r] for r in kept], 0.01),
        "image_text": hand_image_text(images, texts, 0.01),
    }
    losses = region_text_losses(*tensors(student, teacher, pool, images, texts))
    assert tuple(losses) == LOSS_NAMES
    for name in LOSS_NAMES:
        assert losses[name].item() == pytest.approx(expected[name], rel=1e-10)
    config = RegionTextLossConfig(region_distill_weight=2.0, concept_contrastive_weight=0.5, image_text_weight=0.0)
    weighted = region_text_losses(*tensors(student, teacher, pool, images, texts), config=config)
    assert weighted["region_distill"].item() == pytest.approx(2.0 * expected["region_distill"], rel=1e-10)
    assert weighted["concept_contrastive"].item() == pytest.approx(0.5 * expected["concept_contrastive"], rel=1e-10)
    assert weighted["image_text"].item() == 0.0


def test_teacher_pool_may_differ_but_must_list_the_same_concepts(batch):
    pool, teacher, student = batch
    rng = np.random.default_rng(3)
    images = rng.normal(size=(2, D))
    student_pool = rng.normal(size=(K, D))
    losses = region_text_losses(*tensors(student, teacher, student_pool, images, images),
                                teacher_concept_embeddings=torch.tensor(pool))
    probs, targets, keep = hand_teacher(teacher, pool, 0.01, 0.1)  # labels from the teacher's pool ...
    kept = [r for r in range(len(keep)) if keep[r]]
    # ... and the embeddings from the student's
    hand = hand_contrastive(student[kept], student_pool, [targets[r] for r in kept], 0.01)
    assert losses["concept_contrastive"].item() == pytest.approx(hand, rel=1e-10)
    with pytest.raises(ValueError):
        region_text_losses(*tensors(student, teacher, student_pool, images, images),
                           teacher_concept_embeddings=torch.tensor(pool[:5]))


def test_gradients_reach_the_student_only(batch):
    pool, teacher, student = batch
    student_t, teacher_t, pool_t, images = tensors(student, teacher, pool, student[:3])
    student_t.requires_grad_(True)
    teacher_t.requires_grad_(True)
    images.requires_grad_(True)
    losses = region_text_losses(student_t, teacher_t, pool_t, images, tensors(teacher[:3])[0])
    sum(losses.values()).backward()
    assert student_t.grad is not None and student_t.grad.abs().sum() > 0 and images.grad.abs().sum() > 0
    assert teacher_t.grad is None  # pseudo-labels carry no gradient
    assert student_t.grad[1].abs().sum() == 0  # a dropped (ambiguous) region gets none either


def test_a_batch_without_regions_gives_zero_region_losses():
    pool = torch.eye(4)
    empty = torch.zeros(0, 4, requires_grad=True)
    images = torch.randn(2, 4, requires_grad=True)
    losses = region_text_losses(empty, torch.zeros(0, 4), pool, images, torch.randn(2, 4))
    assert losses["region_distill"].item() == 0.0 and losses["concept_contrastive"].item() == 0.0
    sum(losses.values()).backward()
    assert empty.grad.shape == (0, 4)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        RegionTextLossConfig(temperature=0.0)
    with pytest.raises(ValueError):
        RegionTextLossConfig(concept_threshold=1.0)


# ---- two ranks (gloo on CPU) ----------------------------------------------------------------------------------------
def _two_rank_worker(rank: int, world_size: int, folder: str, images, texts) -> None:
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=world_size)
    try:
        local = slice(rank * 3, rank * 3 + 3)
        mine_images = images[local].clone().requires_grad_(True)
        mine_texts = texts[local].clone().requires_grad_(True)
        loss = image_text_contrastive_loss(mine_images, mine_texts)  # rank / world size from the process group
        loss.backward()
        # unequal per-rank batches: every rank is cut to the smallest (rank 1 brings only 2 pairs)
        size = 3 if rank == 0 else 2
        uneven = image_text_contrastive_loss(images[local][:size], texts[local][:size])
        torch.save((loss.detach(), mine_images.grad, mine_texts.grad, uneven), f"{folder}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_image_text_loss_gathered_over_two_ranks_equals_the_global_batch_loss(tmp_path):
    torch.manual_seed(0)
    images, texts = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    # fork: the workers reuse this process's imports (spawning re-imports torch and takes half a minute)
    torch.multiprocessing.start_processes(
        _two_rank_worker, args=(2, str(tmp_path), images, texts), nprocs=2, join=True, start_method="fork"
    )
    whole_images, whole_texts = images.clone().requires_grad_(True), texts.clone().requires_grad_(True)
    whole = image_text_contrastive_loss(whole_images, whole_texts, rank=0, world_size=1)
    whole.backward()
    for rank in range(2):
        loss, image_grad, text_grad, uneven = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert loss.item() == pytest.approx(whole.item(), rel=1e-12)  # every rank sees the global-batch loss
        # Gradients flow through the gather: each rank gets the sum over ranks of the global loss's gradient, i.e.
        # world_size × its slice of the single-process gradient; DDP's average over ranks then restores it exactly.
        local = slice(rank * 3, rank * 3 + 3)
        torch.testing.assert_close(image_grad, 2 * whole_images.grad[local], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(text_grad, 2 * whole_texts.grad[local], rtol=1e-10, atol=1e-12)
        first_two = [0, 1, 3, 4]
        cut = image_text_contrastive_loss(images[first_two], texts[first_two], rank=0, world_size=1)
        assert uneven.item() == pytest.approx(cut.item(), rel=1e-12)
