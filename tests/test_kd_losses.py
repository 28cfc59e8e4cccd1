"""Knowledge-distillation loss terms against an independent float64 numpy computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsbs_jax import losses

BATCH, LENGTH, VOCAB, K = 3, 5, 11, 4
KL_CASES = [(t, d) for t in (1.0, 2.0) for d in ("forward", "reverse")]


def _logits(seed: int, shape=(BATCH, LENGTH, VOCAB)) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 2.0, shape).astype(np.float32)


def _weights() -> np.ndarray:
    """Rows of 5, 3 and 1 real tokens, 0-padded."""
    return (np.arange(LENGTH)[None] < np.array([[5], [3], [1]])).astype(np.int32)


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_kl(student, teacher, temperature, direction) -> np.ndarray:
    """Per-position T^2 * KL between softmax(teacher / T) and softmax(student / T)."""
    p = np.exp(_np_log_softmax(np.asarray(student, np.float64) / temperature))
    q = np.exp(_np_log_softmax(np.asarray(teacher, np.float64) / temperature))
    a, b = (q, p) if direction == "forward" else (p, q)
    return temperature**2 * (a * np.log(a / b)).sum(-1)


def _np_topk_kl(student_logits, ids, logprobs, temperature, direction) -> np.ndarray:
    """The renormalised definition written out: both distributions over the k ids only."""
    student_topk = np.take_along_axis(np.asarray(student_logits, np.float64), ids, -1)
    q = np.exp(np.asarray(logprobs, np.float64) / temperature)
    q /= q.sum(-1, keepdims=True)
    p = np.exp(student_topk / temperature)
    p /= p.sum(-1, keepdims=True)
    a, b = (q, p) if direction == "forward" else (p, q)
    return temperature**2 * (a * np.log(a / b)).sum(-1)


def _topk(teacher_logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's k most likely ids and their log-probabilities at T = 1."""
    log_probs = _np_log_softmax(teacher_logits)
    ids = np.argsort(-log_probs, axis=-1)[..., :k].astype(np.int32)
    return ids, np.take_along_axis(log_probs, ids, -1).astype(np.float32)


def _check_sums(result, expected_per_token, weights):
    total, weight_sum = result
    assert total.dtype == jnp.float32 and weight_sum.dtype == jnp.float32
    np.testing.assert_allclose(total, (expected_per_token * weights).sum(), rtol=1e-5)
    assert weight_sum == weights.sum()


@pytest.mark.parametrize("temperature, direction", KL_CASES)
def test_kl_sums_equals_numpy_over_real_tokens(temperature, direction):
    student, teacher, weights = _logits(0), _logits(1), _weights()
    result = losses.kl_sums(student, teacher, weights, temperature, direction)
    _check_sums(result, _np_kl(student, teacher, temperature, direction), weights)


@pytest.mark.parametrize("temperature, direction", KL_CASES)
def test_kl_is_zero_for_equal_logits_and_positive_otherwise(temperature, direction):
    student, weights = _logits(0), _weights()
    same, _ = losses.kl_sums(student, student.copy(), weights, temperature, direction)
    assert abs(float(same)) < 1e-6

    def one_token(s, t):
        return losses.kl_sums(s[None, None], t[None, None], np.ones((1, 1)), temperature, direction)

    different, _ = jax.vmap(one_token)(student.reshape(-1, VOCAB), _logits(1).reshape(-1, VOCAB))
    assert different.shape == (BATCH * LENGTH,) and np.all(np.asarray(different) > 0)


@pytest.mark.parametrize("temperature, direction", KL_CASES)
def test_kl_is_invariant_to_a_constant_added_to_a_row_of_logits(temperature, direction):
    student, teacher, weights = _logits(0), _logits(1), _weights()
    shift = np.random.default_rng(2).normal(0.0, 10.0, (BATCH, LENGTH, 1)).astype(np.float32)
    base, _ = losses.kl_sums(student, teacher, weights, temperature, direction)
    shifted, _ = losses.kl_sums(student + shift, teacher - shift, weights, temperature, direction)
    np.testing.assert_allclose(shifted, base, rtol=1e-5)


@pytest.mark.parametrize("temperature, direction", KL_CASES)
def test_topk_kl_with_the_whole_vocabulary_is_kl_sums(temperature, direction):
    student, teacher, weights = _logits(0), _logits(1), _weights()
    rng = np.random.default_rng(3)
    ids = np.stack([rng.permutation(VOCAB) for _ in range(BATCH * LENGTH)]).astype(np.int32)
    ids = ids.reshape(BATCH, LENGTH, VOCAB)
    logprobs = np.take_along_axis(_np_log_softmax(teacher), ids, -1).astype(np.float32)
    topk = losses.topk_kl_sums(student, ids, logprobs, weights, temperature, direction)
    full = losses.kl_sums(student, teacher, weights, temperature, direction)
    np.testing.assert_allclose(topk[0], full[0], rtol=1e-5)
    assert topk[1] == full[1]


@pytest.mark.parametrize("temperature, direction", KL_CASES)
def test_topk_kl_equals_the_renormalised_numpy_definition(temperature, direction):
    student, teacher, weights = _logits(0), _logits(1), _weights()
    ids, logprobs = _topk(teacher, K)
    result = losses.topk_kl_sums(student, ids, logprobs, weights, temperature, direction)
    expected = _np_topk_kl(student, ids, logprobs, temperature, direction)
    _check_sums(result, expected, weights)


def test_topk_kl_ignores_whatever_padding_positions_hold():
    student, weights = _logits(0), _weights()
    ids, logprobs = _topk(_logits(1), K)
    padding = (weights == 0)[..., None]
    junk_ids = np.where(padding, np.int32(10 * VOCAB), ids)
    junk_logprobs = np.where(padding, np.float32(np.nan), logprobs)

    def loss(student, ids, logprobs):
        return losses.topk_kl_sums(student, ids, logprobs, weights, 2.0)[0]

    np.testing.assert_allclose(
        loss(student, junk_ids, junk_logprobs), loss(student, ids, logprobs), rtol=1e-6
    )
    gradient = jax.grad(loss)(student, junk_ids, junk_logprobs)
    assert np.all(np.isfinite(gradient))
    assert np.all(np.asarray(gradient)[weights == 0] == 0)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_kl_gradients_reach_the_student_only(direction):
    student, teacher, weights = _logits(0), _logits(1), _weights()
    ids, logprobs = _topk(teacher, K)

    def full(student, teacher):
        return losses.kl_sums(student, teacher, weights, 2.0, direction)[0]

    def topk(student, logprobs):
        return losses.topk_kl_sums(student, ids, logprobs, weights, 2.0, direction)[0]

    for loss, teacher_input in ((full, teacher), (topk, logprobs)):
        to_student, to_teacher = jax.grad(loss, argnums=(0, 1))(student, teacher_input)
        assert np.all(np.isfinite(to_student)) and np.any(np.asarray(to_student) != 0)
        assert np.all(np.asarray(to_teacher) == 0)


def _np_hidden(student, teacher, kind, projection=None) -> np.ndarray:
    student, teacher = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
    if projection is not None:
        student = student @ np.asarray(projection, np.float64)
    if kind == "mse":
        return ((student - teacher) ** 2).mean(-1)
    norms = np.linalg.norm(student, axis=-1) * np.linalg.norm(teacher, axis=-1)
    return 1.0 - (student * teacher).sum(-1) / norms


@pytest.mark.parametrize("kind", ["mse", "cosine"])
@pytest.mark.parametrize("student_width", [6, 4], ids=["same_width", "projected"])
def test_hidden_state_sums_equal_numpy(kind, student_width):
    teacher_width, weights = 6, _weights()
    student = _logits(0, (BATCH, LENGTH, student_width))
    teacher = _logits(1, (BATCH, LENGTH, teacher_width))
    projection = None
    if student_width != teacher_width:
        projection = losses.init_projection(jax.random.key(0), student_width, teacher_width)
        assert projection.shape == (student_width, teacher_width)
    result = losses.hidden_state_sums(student, teacher, weights, kind, projection)
    _check_sums(result, _np_hidden(student, teacher, kind, projection), weights)


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_hidden_state_gradients_reach_the_student_and_projection_only(kind):
    student, teacher = _logits(0, (BATCH, LENGTH, 4)), _logits(1, (BATCH, LENGTH, 6))
    projection = losses.init_projection(jax.random.key(0), 4, 6)

    def loss(student, teacher, projection):
        return losses.hidden_state_sums(student, teacher, _weights(), kind, projection)[0]

    gradients = jax.grad(loss, argnums=(0, 1, 2))(student, teacher, projection)
    for gradient in (gradients[0], gradients[2]):
        assert np.all(np.isfinite(gradient)) and np.any(np.asarray(gradient) != 0)
    assert np.all(np.asarray(gradients[1]) == 0)


def test_cosine_of_a_zero_state_is_finite():
    zeros = np.zeros((1, 2, 3), np.float32)

    def loss(student):
        return losses.hidden_state_sums(student, zeros + 1, np.ones((1, 2)), "cosine")[0]

    np.testing.assert_allclose(loss(zeros), 2.0)
    assert np.all(np.isfinite(jax.grad(loss)(zeros)))


def test_bad_options_and_shapes_are_refused():
    student, teacher, weights = _logits(0), _logits(1), _weights()
    with pytest.raises(ValueError, match="direction must be one of forward, reverse"):
        losses.kl_sums(student, teacher, weights, direction="backward")
    with pytest.raises(ValueError, match="temperature must be positive, got 0"):
        losses.topk_kl_sums(student, *_topk(teacher, K), weights, temperature=0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        losses.kl_sums(student, teacher[..., :-1], weights)
    hidden_4, hidden_6 = _logits(0, (BATCH, LENGTH, 4)), _logits(1, (BATCH, LENGTH, 6))
    with pytest.raises(ValueError, match="student width 4 differs from teacher width 6"):
        losses.hidden_state_sums(hidden_4, hidden_6, weights)
    with pytest.raises(ValueError, match=r"projection has shape \(6, 4\), expected"):
        losses.hidden_state_sums(hidden_4, hidden_6, weights, projection=np.zeros((6, 4)))
    with pytest.raises(ValueError, match="must be one of mse, cosine, got 'l1'"):
        losses.hidden_state_sums(hidden_6, hidden_6, weights, kind="l1")


def test_sums_over_two_halves_of_a_batch_add_up_to_the_whole():
    rows = 2 * BATCH
    weights = np.concatenate([_weights(), _weights()[::-1]])
    student, teacher = _logits(0, (rows, LENGTH, VOCAB)), _logits(1, (rows, LENGTH, VOCAB))
    ids, logprobs = _topk(teacher, K)
    hidden_student, hidden_teacher = _logits(2, (rows, LENGTH, 4)), _logits(3, (rows, LENGTH, 6))
    projection = losses.init_projection(jax.random.key(0), 4, 6)
    terms = {
        "kl": lambda r: losses.kl_sums(student[r], teacher[r], weights[r], 2.0, "reverse"),
        "topk": lambda r: losses.topk_kl_sums(student[r], ids[r], logprobs[r], weights[r], 2.0),
        "hidden": lambda r: losses.hidden_state_sums(
            hidden_student[r], hidden_teacher[r], weights[r], "cosine", projection
        ),
    }
    halves = slice(0, BATCH), slice(BATCH, rows)
    for name, term in terms.items():
        whole = term(slice(None))
        parts = [term(half) for half in halves]
        np.testing.assert_allclose(parts[0][0] + parts[1][0], whole[0], rtol=1e-6, err_msg=name)
        assert parts[0][1] + parts[1][1] == whole[1] == weights.sum()
